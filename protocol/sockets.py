"""The one place where ZeroMQ sockets are made and their options set.

Bind/connect rule: long-lived parties bind (the supervisor's control ROUTER and event
PUB, the gateway's request ROUTER and stream SUB); short-lived parties (workers, the
CLI) connect. A worker can therefore die and come back without anyone rebinding.

Endpoints are ``ipc://`` paths inside a 0700 runtime directory (made and checked by
protocol/paths.py). Each instance of turnout has its own directory, so several can
run side by side (tests do).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from protocol.paths import UnsafePathError, ensure_private_dir

__all__ = ["Endpoints", "UnsafePathError", "bind", "default_runtime_dir", "default_runtime_root",
           "ensure_runtime_dir", "make_socket", "unlink_ipc"]


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


def default_runtime_root() -> tuple[Path, Path]:
    """(the directory that holds one runtime directory per port, the first directory
    above it that is not turnout's own). ``TURNOUT_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/turnout``, else ``$TMPDIR/turnout-UID``: a shared temp
    directory, where :func:`ensure_runtime_dir` refuses a directory another user made."""
    base = os.environ.get("TURNOUT_RUNTIME_DIR")
    if base:
        p = Path(os.path.abspath(base))
        return p, p.parent
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "turnout", Path(xdg)
    tmp = Path(tempfile.gettempdir())
    return tmp / f"turnout-{os.getuid()}", tmp


def default_runtime_dir() -> Path:
    return default_runtime_root()[0]


def ensure_runtime_dir(path: Path, base: Path | None = None,
                       report: Callable[[str], None] | None = None) -> Path:
    """Create (0700) and check an instance's runtime directory and every component
    of it that turnout owns below ``base`` (protocol/paths.py); refuses with
    :class:`UnsafePathError` what another user made or could change."""
    # ipc:// paths are limited by sun_path (108 bytes on Linux, 104 on macOS).
    if len(os.path.abspath(path)) > 80:
        raise ValueError(f"runtime directory path too long for ipc sockets: {path}")
    return ensure_private_dir(path, base, report)


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
