"""structlog set-up shared by every turnout process.

JSON lines when stderr is not a terminal (daemon, tests, CI), a readable console
format when it is. ``TURNOUT_LOG_LEVEL`` picks the level (default ``info``).
The request id is bound with :func:`structlog.contextvars.bind_contextvars`, so every
line logged while handling a request carries it.
"""

from __future__ import annotations

import logging
import os
import sys

import msgspec
import structlog

_enc = msgspec.json.Encoder(enc_hook=repr)


def _dumps(obj: object, **_: object) -> str:
    """structlog's JSON serializer: msgspec, several times faster than json.dumps
    (one access line per request is on the hot path); unknown types as repr()."""
    return _enc.encode(obj).decode()


def setup_logging(process: str, *, json: bool | None = None) -> None:
    level_name = os.environ.get("TURNOUT_LOG_LEVEL", "info").upper()
    level = getattr(logging, level_name, logging.INFO)
    if json is None:
        json = not sys.stderr.isatty()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write() per line: print() writes the text and the newline separately,
        # so lines of processes sharing the supervisor's stderr could interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(proc=process)
    _route_stdlib_logging(level)


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
