"""The one place where ZeroMQ sockets are made and their options set.

Bind/connect rule: long-lived parties bind (the supervisor's control ROUTER and event
PUB, the gateway's request ROUTER and stream SUB); short-lived parties (workers, the
CLI) connect. A worker can therefore die and come back without anyone rebinding.

Endpoints are ``ipc://`` paths inside a 0700 runtime directory. Each instance of
turnout has its own directory, so several can run side by side (tests do).
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq


@dataclass(frozen=True)
class Endpoints:
    """Addresses of the bound sockets of one turnout instance."""

    runtime_dir: str

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.runtime_dir}/{name}"

    @property
    def control(self) -> str:  # supervisor ROUTER
        return self._ipc("control")

    @property
    def events(self) -> str:  # supervisor PUB
        return self._ipc("events")

    def gateway_requests(self, gateway_id: str) -> str:  # gateway ROUTER
        return self._ipc(f"{gateway_id}.req")

    def gateway_streams(self, gateway_id: str) -> str:  # gateway SUB (bound)
        return self._ipc(f"{gateway_id}.str")


def default_runtime_dir() -> Path:
    base = os.environ.get("TURNOUT_RUNTIME_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "turnout"
    return Path(tempfile.gettempdir()) / f"turnout-{os.getuid()}"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` 0700 and refuse one that another user could write to."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    # ipc:// paths are limited by sun_path (108 bytes on Linux, 104 on macOS).
    if len(str(path)) > 80:
        raise ValueError(f"runtime directory path too long for ipc sockets: {path}")
    return path


def _common(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    # Bus traffic is local and bounded by admission control, so queues never drop
    # (HWM 0 = unlimited) rather than silently losing a token.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


def make_socket(ctx: zmq.Context, kind: int, *, identity: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(kind)
    _common(sock)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        # Sending to a peer that has gone raises EHOSTUNREACH instead of dropping.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if kind == zmq.XPUB:
        # Deliver every (re)subscription, so a restarted gateway is noticed.
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    if kind in (zmq.DEALER, zmq.XPUB, zmq.PUB, zmq.SUB):
        sock.setsockopt(zmq.RECONNECT_IVL, 20)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        try:
            os.unlink(path)  # a stale file from a killed predecessor
        except FileNotFoundError:
            pass
    sock.bind(endpoint)


def unlink_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        try:
            os.unlink(endpoint[len("ipc://") :])
        except FileNotFoundError:
            pass
