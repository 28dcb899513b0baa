"""The daemon's log writer: ``python -m turnout.supervisor.logwriter PATH``.

``turnout up --daemon`` points the supervisor's stdout and stderr (and so every
child's) at a pipe; this process, started beside it in a session of its own,
reads the pipe and writes the log (issue 14):

* **Every line is a JSON object.** A line that already is one (structlog's, from
  every turnout process) is written as it is. Anything else (a C library's output,
  the dump of Python's fault handler after a native crash, a traceback printed
  before logging was set up) is wrapped: consecutive such lines, up to a pause of
  ``GROUP_PAUSE_S`` or the next JSON line, become one record
  ``{"event": "output", "text": ...}``, or ``"crash_output"`` at level error when
  they hold a traceback or a fatal error: the traceback stays in one record.
* **Private and bounded.** The file is 0600 in a 0700 directory
  (protocol/paths.py). It rotates at ``TURNOUT_LOG_MAX_BYTES`` (default 10 MB),
  keeping ``TURNOUT_LOG_BACKUPS`` (default 3) old files, ``turnout.log.1`` the
  newest of them: at most 40 MB in all.

It prints ``ok`` on stdout once the log is open (the daemon's launcher waits for
it) and exits when every writer has closed the pipe (the supervisor and all its
children are gone), after writing what is left. It never stops reading before
then, so no turnout process ever blocks on a full pipe; a record that cannot be
written (a full disk) is dropped and counted in the next one that gets through.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from turnout.protocol.paths import PRIVATE_FILE_MODE, ensure_private_dir, open_private

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
GROUP_PAUSE_S = 0.2  # a burst of raw lines (one traceback) arrives within this
PARTIAL_LINE_S = 1.0  # an unterminated line is taken as it is after this
MAX_TEXT = 64 * 1024  # characters of raw output in one record
_CRASH = re.compile(r"Traceback \(most recent call last\)|Fatal Python error|Segmentation fault|Aborted")
_STARTS = ("Traceback (most recent call last):", "Fatal Python error:")  # a new burst begins
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(dict)


class RotatingLog:
    """Options:
    path: the log file (its directory must exist).
    max_bytes: rotate before a record would take the file past this.
    backups: old files kept (``PATH.1`` newest); 0 truncates instead.
    """

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        self.path = path
        self.max_bytes = max(1024, max_bytes)
        self.backups = max(0, backups)
        for i in range(1, self.backups + 1):  # old files of an older turnout: private too
            old = self._backup(i)
            if old.exists() and not old.is_symlink():
                os.chmod(old, PRIVATE_FILE_MODE)
        self.fd = open_private(path)
        self.size = os.fstat(self.fd).st_size
        self.dropped = 0

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def write(self, line: bytes) -> None:
        """One record (a JSON object, newline-terminated)."""
        if self.dropped:
            note, self.dropped = self.dropped, 0
            self.write(_record("log_records_dropped", "warning", count=note))
        if self.size and self.size + len(line) > self.max_bytes:
            self.rotate()
        try:
            os.write(self.fd, line)
            self.size += len(line)
        except OSError:
            self.dropped += 1

    def rotate(self) -> None:
        os.close(self.fd)
        try:
            if self.backups:
                for i in range(self.backups - 1, 0, -1):
                    if self._backup(i).exists():
                        os.replace(self._backup(i), self._backup(i + 1))
                os.replace(self.path, self._backup(1))
            else:
                os.truncate(self.path, 0)
        except OSError:
            pass
        self.fd = open_private(self.path)
        self.size = os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


def _record(event: str, level: str, **fields: object) -> bytes:
    rec = {"timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "level": level, "event": event,
           "proc": "stderr", **fields}
    return _enc.encode(rec) + b"\n"


def wrap_raw(lines: list[str]) -> bytes:
    """One JSON record for a burst of lines that were not JSON."""
    text = "\n".join(lines)
    fields: dict[str, object] = {}
    if len(text) > MAX_TEXT:
        text, fields["truncated_chars"] = text[:MAX_TEXT], len(text) - MAX_TEXT
    crash = bool(_CRASH.search(text))
    return _record("crash_output" if crash else "output", "error" if crash else "info", text=text, **fields)


def is_json_object(line: bytes) -> bool:
    if not line.startswith(b"{"):
        return False
    try:
        _dec.decode(line)
    except msgspec.DecodeError:
        return False
    return True


class Pump:
    """Splits what arrives into lines and turns them into records (pure: tested
    without a pipe). ``feed`` and ``tick`` return the records to write."""

    def __init__(self) -> None:
        self.partial = b""
        self.partial_since = 0.0
        self.raw: list[str] = []
        self.raw_at = 0.0

    def feed(self, data: bytes, now: float) -> list[bytes]:
        out: list[bytes] = []
        *lines, rest = (self.partial + data).split(b"\n")
        if lines or not self.partial:
            self.partial_since = now  # the unterminated line (if any) began now
        self.partial = rest
        for line in lines:
            out += self._line(line.rstrip(b"\r"), now)
        return out

    def _line(self, line: bytes, now: float) -> list[bytes]:
        if is_json_object(line):
            return [*self.flush(), line + b"\n"]
        text = line.decode("utf-8", errors="replace")
        out = self.flush() if text.startswith(_STARTS) else []
        self.raw.append(text)
        self.raw_at = now
        return out

    def tick(self, now: float) -> list[bytes]:
        """Records that waited long enough: a burst of raw lines that has paused,
        an unterminated line that has waited."""
        out: list[bytes] = []
        if self.partial and now - self.partial_since >= PARTIAL_LINE_S:
            line, self.partial = self.partial, b""
            out += self._line(line, now)
            out += self.flush()
        if self.raw and now - self.raw_at >= GROUP_PAUSE_S:
            out += self.flush()
        return out

    def flush(self) -> list[bytes]:
        if not self.raw:
            return []
        rec, self.raw = wrap_raw(self.raw), []
        return [rec]

    def finish(self) -> list[bytes]:
        out: list[bytes] = []
        if self.partial:
            line, self.partial = self.partial, b""
            out += self._line(line, 0.0)
        return out + self.flush()


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0])
    # The terminal's signals are not ours: we stop at EOF, after the last writer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        ensure_private_dir(path.parent)
        log = RotatingLog(path, _int_env("TURNOUT_LOG_MAX_BYTES", DEFAULT_MAX_BYTES),
                          _int_env("TURNOUT_LOG_BACKUPS", DEFAULT_BACKUPS))
    except OSError as e:
        print(f"cannot write the log {path}: {e}", flush=True)
        return 2
    print("ok", flush=True)
    pump = Pump()
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    try:
        while True:
            ready = sel.select(timeout=GROUP_PAUSE_S / 2)
            now = time.monotonic()
            if ready:
                try:
                    data = os.read(0, 65536)
                except InterruptedError:
                    continue
                if not data:
                    break
                for rec in pump.feed(data, now):
                    log.write(rec)
            for rec in pump.tick(now):
                log.write(rec)
        for rec in pump.finish():
            log.write(rec)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
