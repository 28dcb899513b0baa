"""The CLI's side of the supervisor's control socket, and where an instance keeps
its files.

An instance of turnout is found by its runtime directory (its ipc sockets:
``default_runtime_dir() / PORT`` unless ``--runtime-dir`` says otherwise); its
pidfile and its daemon log live in the state directory
(``$XDG_STATE_HOME/turnout/PORT/``, else ``~/.local/state/turnout/PORT/``), so
several instances on different ports coexist.

:class:`ControlClient` owns one DEALER socket (one owner per socket: the CLI's main
thread), sends one typed command at a time and waits for its reply with a deadline:
the reply that carries the command's ``call_id``; one to an earlier command that
timed out is dropped, never taken as this one's answer.
A supervisor that is not there (no socket file, or no answer) raises
:class:`NotRunning`, which the CLI turns into one clear line and exit code 1.

Before it trusts an answer, the client checks who gave it (issue 14: another user
could otherwise plant a ``control`` socket and have ``turnout down`` kill a pid of
their choosing): the runtime directory and its ancestors (protocol/paths.py), the
socket file (a socket, ours), and the kernel's credentials of the process that
answered (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS, through ZeroMQ's
``Peer-Address``): same uid. :func:`verify_supervisor` is what ``turnout down``
asks before it signals a pid. Each failure raises :class:`Untrusted`.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from pathlib import Path

import msgspec
import psutil
import zmq

from turnout.protocol import messages as m
from turnout.protocol.paths import (
    UnsafePathError,
    check_own_socket,
    check_private_dir,
    ensure_private_dir,
    instance_state_dir,
    peer_credentials,
    state_base,
    state_dir,  # noqa: F401 - the supervisor's callers read it here
)
from turnout.protocol.sockets import (
    Endpoints,
    default_runtime_dir,
    default_runtime_root,
    make_socket,
)


class NotRunning(Exception):
    pass


class Untrusted(NotRunning):
    """Something answers (or could) for the instance, but it is not provably ours:
    another user's directory, socket or process. The message says which."""


class NoAnswer(NotRunning):
    """The control socket is there, but nothing answered in time (busy or hung)."""

    def __init__(self, message: str, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


def ensure_instance_state_dir(port: int) -> Path:
    """The instance's state directory, made 0700 (``turnout`` and ``PORT`` both) and
    checked (protocol/paths.py). Raises UnsafePathError."""
    return ensure_private_dir(instance_state_dir(port), state_base())


def pidfile_path(port: int) -> Path:
    return instance_state_dir(port) / "turnout.pid"


def logfile_path(port: int) -> Path:
    return instance_state_dir(port) / "turnout.log"


def runtime_dir_for(port: int, runtime_dir: str | None = None) -> Path:
    return Path(runtime_dir) if runtime_dir else default_runtime_dir() / str(port)


def runtime_base_for(runtime_dir: str | None = None) -> Path:
    """The first directory above an instance's runtime directory that is not
    turnout's own (the parent of an explicit ``--runtime-dir``)."""
    if runtime_dir:
        return Path(os.path.abspath(runtime_dir)).parent
    return default_runtime_root()[1]


def _is_supervisor_cmdline(cmd: list[str]) -> bool:
    """``python -m turnout.cli up ...``, the ``turnout up ...`` entry point, or a
    supervisor started before the turnout namespace (``python -m turnout.supervisor.cli up``,
    ``python -m turnout.cli up``)."""
    if "up" not in cmd:
        return False
    head = cmd[: cmd.index("up")]
    return any(a in ("turnout.cli", "supervisor.cli", "cli") or os.path.basename(a) == "turnout" for a in head)


def verify_supervisor(pid: int, runtime_dir: Path, peer_pid: int | None, port: int = 0) -> str | None:
    """Why ``pid`` is not provably this instance's supervisor, or None when it is:
    it runs as us, its command line is ``turnout up``, and it is the process that
    answered on the control socket (the kernel's peer pid), or holds that socket,
    or is the one the instance's pidfile names."""
    why = f"pid {pid}, named by the process answering on {runtime_dir / 'control'}, is not turnout's supervisor"
    if pid <= 0 or pid == os.getpid():
        return why
    try:
        proc = psutil.Process(pid)
        if proc.uids().real != os.getuid():
            return f"{why}: it runs as uid {proc.uids().real}"
        if not _is_supervisor_cmdline(proc.cmdline()):
            return f"{why}: it runs {' '.join(proc.cmdline())[:120]!r}"
    except psutil.Error as e:
        return f"{why}: {type(e).__name__}"
    if peer_pid is not None:
        return None if peer_pid == pid else f"{why}: pid {peer_pid} answered"
    control = str(runtime_dir / "control")
    try:
        if any(c.laddr == control for c in proc.net_connections(kind="unix")):
            return None
    except (psutil.Error, NotImplementedError):
        pass
    if port:
        try:
            if pidfile_path(port).read_text().strip() == str(pid):
                return None
        except OSError:
            pass
    return f"{why}: it neither answered on nor holds that socket"


class ControlClient:
    """Options:
    runtime_dir: the instance's runtime directory (where ``control`` is).
    timeout_s: how long to wait for each reply.
    """

    def __init__(self, runtime_dir: Path, timeout_s: float = 5.0) -> None:
        self.runtime_dir = runtime_dir
        self.timeout_s = timeout_s
        self.endpoints = Endpoints(str(runtime_dir))
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(m.FromSupervisor)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self.peer_pid: int | None = None  # the kernel's pid of the process that answered
        self._call_ids = itertools.count(1)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            path = self.endpoints.control[len("ipc://"):]
            if not os.path.exists(path):
                raise NotRunning(f"no control socket at {path}")
            try:
                check_private_dir(self.runtime_dir)
                check_own_socket(Path(path))
            except UnsafePathError as e:
                raise Untrusted(str(e)) from None
            except FileNotFoundError:
                raise NotRunning(f"no control socket at {path}") from None
            self._ctx = zmq.Context()
            # A fresh identity per client: the supervisor's ROUTER tells peers apart
            # by it, and a CLI id never collides with a worker's or the gateway's.
            self._sock = make_socket(self._ctx, zmq.DEALER, identity=f"cli-{os.getpid()}-{secrets.token_hex(4)}".encode())
            self._sock.connect(self.endpoints.control)
        return self._sock

    def request(self, cmd: m.Command, timeout_s: float | None = None) -> m.FromSupervisor:
        """Send ``cmd`` and return its reply (the one with its ``call_id``); raises
        NoAnswer when none comes within ``timeout_s`` (default: the client's)."""
        sock = self._socket()
        call_id = next(self._call_ids)
        sock.send(self._enc.encode(msgspec.structs.replace(cmd, call_id=call_id)))
        wait = timeout_s or self.timeout_s
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(max(1, int(1000 * left)), zmq.POLLIN):
                raise NoAnswer(f"no answer on {self.endpoints.control}", wait)
            frame = sock.recv(copy=False)
            self._check_peer(frame)
            try:
                reply = self._dec.decode(frame.buffer)
            except msgspec.DecodeError:
                continue
            if getattr(reply, "call_id", 0) == call_id:
                return reply
            # the answer to an earlier command of this client that timed out: not ours

    def _check_peer(self, frame: zmq.Frame) -> None:
        try:
            addr = frame.get("Peer-Address")
        except zmq.ZMQError:
            addr = None
        uid, pid = peer_credentials(addr if isinstance(addr, str) else None)
        if uid is not None and uid != os.getuid():
            raise Untrusted(f"the process answering on {self.endpoints.control} (pid {pid or '?'}) runs as "
                            f"uid {uid}, not as you (uid {os.getuid()}): refusing to trust it")
        # No credentials from the transport (not a Unix socket): the socket file's
        # owner, checked before connecting, is what there is.
        self.peer_pid = pid
