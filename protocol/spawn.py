"""The spawn contract: how the supervisor hands a child process its spec.

A child (``python -m turnout.gateway.main``, ``python -m turnout.workers.main``) reads its spec,
JSON, on stdin, which the supervisor points at an anonymous file (created 0600 in
the instance's 0700 runtime directory and unlinked at once: no name anyone can
open). Never on the command line: ``/proc/PID/cmdline`` (what ``ps`` shows) is
readable by every local user, and a spec carries the config (a ``base_url`` with
credentials, say) and the instance's bus secret. Not in the environment either:
children inherit it, and it is the first place anyone looks.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import IO, TypeVar

import msgspec

T = TypeVar("T")


def spec_file(spec: bytes, directory: str | None = None) -> IO[bytes]:
    """An unnamed 0600 file holding ``spec``, positioned at its start: the child's
    stdin (``subprocess.Popen(stdin=...)``). Close it once the child is started."""
    f = tempfile.TemporaryFile(dir=directory)
    f.write(spec)
    f.flush()
    f.seek(0)
    return f


def read_spec(type_: type[T], what: str) -> T:
    """The spec on stdin, decoded as ``type_``; stdin is then /dev/null, so nothing
    the child starts inherits the file. ``what`` names the process in the error a
    person who runs it by hand sees."""
    raw = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if not raw.strip():
        raise SystemExit(f"{what}: reads its spec as JSON on stdin; `turnout up` starts it")
    return msgspec.json.decode(raw, type=type_)


__all__ = ["read_spec", "spec_file"]
