"""The CLI's side of the supervisor's control socket, and where an instance keeps
its files.

An instance of turnout is found by its runtime directory (its ipc sockets:
``default_runtime_dir() / PORT`` unless ``--runtime-dir`` says otherwise); its
pidfile and its daemon log live in the state directory
(``$XDG_STATE_HOME/turnout/PORT/``, else ``~/.local/state/turnout/PORT/``), so
several instances on different ports coexist.

:class:`ControlClient` owns one DEALER socket (one owner per socket: the CLI's main
thread), sends one typed command at a time and waits for its reply with a deadline.
A supervisor that is not there (no socket file, or no answer) raises
:class:`NotRunning`, which the CLI turns into one clear line and exit code 1.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec
import zmq

from protocol import messages as m
from protocol.sockets import Endpoints, default_runtime_dir, make_socket


class NotRunning(Exception):
    pass


class NoAnswer(NotRunning):
    """The control socket is there, but nothing answered in time (busy or hung)."""

    def __init__(self, message: str, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


def state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(os.path.expanduser("~")) / ".local" / "state"
    return base / "turnout"


def instance_state_dir(port: int) -> Path:
    return state_dir() / str(port)


def pidfile_path(port: int) -> Path:
    return instance_state_dir(port) / "turnout.pid"


def logfile_path(port: int) -> Path:
    return instance_state_dir(port) / "turnout.log"


def runtime_dir_for(port: int, runtime_dir: str | None = None) -> Path:
    return Path(runtime_dir) if runtime_dir else default_runtime_dir() / str(port)


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
            self._ctx = zmq.Context()
            # A fresh identity per client: the supervisor's ROUTER tells peers apart
            # by it, and a CLI id never collides with a worker's or the gateway's.
            self._sock = make_socket(self._ctx, zmq.DEALER, identity=f"cli-{os.getpid()}-{secrets.token_hex(4)}".encode())
            self._sock.connect(self.endpoints.control)
        return self._sock

    def request(self, cmd: m.Command, timeout_s: float | None = None) -> m.FromSupervisor:
        sock = self._socket()
        sock.send(self._enc.encode(cmd))
        wait = timeout_s or self.timeout_s
        if not sock.poll(int(1000 * wait), zmq.POLLIN):
            raise NoAnswer(f"no answer on {self.endpoints.control}", wait)
        return self._dec.decode(sock.recv())
