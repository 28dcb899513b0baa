"""structlog set-up shared by every turnout process.

JSON lines when stderr is not a terminal (daemon, tests, CI), a readable console
format when it is. ``TURNOUT_LOG_LEVEL`` picks the level (default ``info``).
The request id is bound with :func:`structlog.contextvars.bind_contextvars`, so every
line logged while handling a request carries it.

Every failure is a line like any other (issue 14): an uncaught exception, in the
main thread or another, is one JSON line with its traceback in ``exception``;
records of the standard library's ``logging`` (aiohttp's, asyncio's) go through
the same renderer; Python's fault handler is on, so a native crash (a segfault in
a model runtime) leaves a dump of every thread's stack. That dump is raw text on
stderr, as is anything a C library prints: in daemon mode the log writer
(supervisor/logwriter.py) wraps such lines into JSON records.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

import msgspec
import structlog

_enc = msgspec.json.Encoder(enc_hook=repr)


def _dumps(obj: object, **_: object) -> str:
    """structlog's JSON serializer: msgspec, several times faster than json.dumps
    (one access line per request is on the hot path); unknown types as repr()."""
    return _enc.encode(obj).decode()


class _Stderr:
    """stderr for log lines: a write that fails (the daemon's log writer gone: a
    broken pipe; a full disk) loses that line, never the process that logged it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def setup_logging(process: str, *, json: bool | None = None) -> None:
    level_name = os.environ.get("TURNOUT_LOG_LEVEL", "info").upper()
    level = getattr(logging, level_name, logging.INFO)
    if json is None:
        json = not sys.stderr.isatty()
    def add_proc(_logger: object, _name: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
        # Threads start with empty context variables: every line still says whose it is.
        event_dict.setdefault("proc", process)
        return event_dict

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_proc,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[structlog.typing.Processor]
    if json:
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=False)]
    out = _Stderr(sys.stderr)
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write() per line: print() writes the text and the newline separately,
        # so lines of processes sharing the supervisor's stderr could interleave.
        logger_factory=structlog.WriteLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(proc=process)
    _route_stdlib_logging(level)
    if json:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_crash
    # A native crash dumps every thread's Python stack to stderr.
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr)



class _ToStructlog(logging.Handler):
    """Libraries' stdlib log records (aiohttp, asyncio, the MCP SDK) as our own
    lines: one JSON object each, never a multi-line traceback, whose text may quote
    what a client sent. The exception's class is kept; its traceback only at debug."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kw: dict[str, object] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                kw["error"] = type(record.exc_info[1]).__name__
                if record.levelno < logging.INFO or logging.getLogger().level <= logging.DEBUG:
                    kw["exc_info"] = record.exc_info
            structlog.get_logger().log(record.levelno, record.getMessage()[:500], **kw)
        except Exception:  # a log line must never take the process down
            pass


def _route_stdlib_logging(level: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_ToStructlog())
    # Libraries' info lines are theirs, not ours (and may carry URLs); warnings and up pass.
    root.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


def _log_uncaught(tp: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(tp, KeyboardInterrupt):
        sys.__excepthook__(tp, value, tb)
        return
    structlog.get_logger().critical("uncaught_exception", exc_info=(tp, value, tb))


def _log_thread_crash(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    structlog.get_logger().critical("thread_crashed", thread=getattr(args.thread, "name", ""),
                                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
