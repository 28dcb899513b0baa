"""Private directories and files: where an instance keeps its sockets, pidfile, log,
routing state and backups, made so that no other local user can have made them
first, swap them, or write inside them.

Two kinds of path component, checked one by one (``lstat``: symlinks are not
followed where that matters):

* **turnout's own** (``base`` excluded, down to the directory itself): created with
  ``mkdir`` 0700; must be a real directory owned by the caller. One of ours that is
  looser (an older turnout, a umask) is tightened to 0700 and reported; one owned by
  someone else, or a symlink, is refused with :class:`UnsafePathError`.
* **the ancestors** (``base`` and above; both the path as written and the path it
  resolves to): owned by the caller or root, and not writable by other users unless
  sticky (``/tmp``), as OpenSSH's StrictModes checks a home directory.

Why: a shared temp directory (the runtime-dir fallback when ``XDG_RUNTIME_DIR`` is
unset) lets another user pre-create ``/tmp/turnout-UID`` and receive turnout's
sockets (issue 14). Refusing is the only safe answer; the message says how to get
out (set ``XDG_RUNTIME_DIR`` or ``TURNOUT_RUNTIME_DIR``, or remove the directory).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class UnsafePathError(PermissionError):
    """A path another user controls or could change; the message says which and why."""


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _trusted_owner(uid: int) -> bool:
    return uid in (os.getuid(), 0)


def _ancestor_problem(path: Path, st: os.stat_result) -> str | None:
    if not _trusted_owner(st.st_uid):
        return f"{path} belongs to {_who(st.st_uid)}"
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_ISVTX:
        return None  # sticky (/tmp): others cannot rename or remove our entries
    if mode & stat.S_IWOTH:
        return f"{path} is writable by every user (mode {mode:o})"
    if mode & stat.S_IWGRP and st.st_gid != os.getgid():
        return f"{path} is writable by group {st.st_gid} (mode {mode:o})"
    return None


def _prefixes(path: Path) -> list[Path]:
    parts = path.parts
    return [Path(*parts[: i + 1]) for i in range(len(parts))]


def _check_ancestors(base: Path) -> None:
    """``base`` and every directory above it, as written and as resolved."""
    seen: set[Path] = set()
    for chain in (_prefixes(Path(os.path.abspath(base))), _prefixes(Path(os.path.realpath(base)))):
        for p in chain:
            if p in seen:
                continue
            seen.add(p)
            try:
                st = os.stat(p)  # follows: the directory an entry below is looked up in
            except FileNotFoundError:
                return  # below here, everything is made by us
            problem = _ancestor_problem(p, st)
            if problem:
                raise UnsafePathError(_advice(problem))


def _advice(problem: str) -> str:
    return (f"{problem}: another user could read or replace turnout's files there; refusing. "
            "Remove it, or point turnout elsewhere (XDG_RUNTIME_DIR, TURNOUT_RUNTIME_DIR, XDG_STATE_HOME)")


def _own_components(path: Path, base: Path) -> list[Path]:
    path, base = Path(os.path.abspath(path)), Path(os.path.abspath(base))
    try:
        rel = path.relative_to(base)
    except ValueError:
        raise ValueError(f"{path} is not below {base}") from None
    out = []
    cur = base
    for part in rel.parts:
        cur = cur / part
        out.append(cur)
    return out


def _own_problem(p: Path, st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return f"{p} is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return f"{p} is not a directory"
    if st.st_uid != os.getuid():
        return f"{p} belongs to {_who(st.st_uid)}, not to you ({_who(os.getuid())})"
    return None


def ensure_private_dir(path: Path, base: Path | None = None,
                       report: Callable[[str], None] | None = None) -> Path:
    """Create ``path`` (and whatever is missing between ``base`` and it) 0700, check
    every component (module docstring) and return ``path``. ``base`` (default: the
    parent) is the first directory that is not turnout's own; if missing, it is
    created 0700 too. ``report`` is told about each directory tightened to 0700.
    Raises :class:`UnsafePathError`."""
    path = Path(os.path.abspath(path))
    base = Path(os.path.abspath(base)) if base is not None else path.parent
    if not os.path.lexists(base):
        # XDG_STATE_HOME's ~/.local/state and the like: made private, as the XDG spec asks.
        missing = [p for p in _prefixes(base) if not os.path.lexists(p)]
        _check_ancestors(missing[0].parent)
        for p in missing:
            _mkdir_private(p)
    _check_ancestors(base)
    for p in _own_components(path, base):
        _mkdir_private(p)
        st = os.lstat(p)
        problem = _own_problem(p, st)
        if problem:
            raise UnsafePathError(_advice(problem))
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            os.chmod(p, PRIVATE_DIR_MODE)
            if report is not None:
                report(f"{p} was mode {mode:o}: tightened to 700")
    return path


def _mkdir_private(p: Path) -> None:
    try:
        os.mkdir(p, PRIVATE_DIR_MODE)
    except FileExistsError:
        return
    # mkdir's mode is filtered by the umask; 0700 whatever the umask was.
    os.chmod(p, PRIVATE_DIR_MODE)


def check_private_dir(path: Path) -> None:
    """Refuse (:class:`UnsafePathError`) a directory that another user owns or
    could have written into: the directory itself must be ours and not writable by
    group or others; its ancestors as in the module docstring. Creates and changes
    nothing (the CLI's check before it trusts a socket found there)."""
    path = Path(os.path.abspath(path))
    _check_ancestors(path.parent)
    st = os.lstat(path)
    problem = _own_problem(path, st)
    if problem is None and stat.S_IMODE(st.st_mode) & 0o022:
        problem = f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        raise UnsafePathError(_advice(problem))


def check_own_socket(path: Path) -> None:
    """Refuse a socket file that is not a socket or not ours."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafePathError(_advice(f"{path} is not a socket"))
    if st.st_uid != os.getuid():
        raise UnsafePathError(_advice(f"{path} belongs to {_who(st.st_uid)}, not to you"))


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """Open (creating 0600) a file of ours; one that exists looser is tightened to
    0600. Refuses a symlink or a file owned by someone else. Returns the fd."""
    fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise UnsafePathError(_advice(f"{path} belongs to {_who(st.st_uid)}"))
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def peer_credentials(peer_address: str | None) -> tuple[int | None, int | None]:
    """(uid, pid) of the process at the other end of an ipc connection, from
    ZeroMQ's ``Peer-Address`` message property: libzmq appends the kernel's
    credentials of a Unix-socket peer as ``:uid:gid:pid`` (SO_PEERCRED on Linux;
    LOCAL_PEERCRED on macOS and the BSDs, which carries no pid). (None, None) where
    the transport says nothing: a tcp peer's address (an IPv6 one has colons too,
    but never exactly three with the last-but-one two fields numeric) or an empty one."""
    if not peer_address or peer_address.count(":") != 3:
        return None, None
    _, uid, gid, pid = peer_address.split(":")
    if not (uid.isdigit() and gid.isdigit()):
        return None, None
    return int(uid), (int(pid) if pid.isdigit() else None)


# Where an instance keeps its state: shared by the supervisor (pid file, log) and
# the gateway (routing.json).


def state_base() -> Path:
    """``$XDG_STATE_HOME``, else ``~/.local/state``: the directory above turnout's own."""
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) if xdg else Path(os.path.expanduser("~")) / ".local" / "state"


def state_dir() -> Path:
    return state_base() / "turnout"


def instance_state_dir(port: int) -> Path:
    """The state directory of the instance serving ``port``."""
    return state_dir() / str(port)
