"""The one place where ZeroMQ sockets are made and their options set.

Bind/connect rule: long-lived parties bind (the supervisor's control ROUTER and event
PUB, the gateway's request ROUTER and stream SUB); short-lived parties (workers, the
CLI) connect. A worker can therefore die and come back without anyone rebinding.

Endpoints are ``ipc://`` paths inside a 0700 runtime directory (made and checked by
protocol/paths.py). Each instance of turnout has its own directory, so several can
run side by side (tests do).

Authentication (issue 14). The 0700 directory keeps other users out, but any
process of the same user could connect, register as a worker and be sent prompts,
take over a worker's identity, or publish into the gateway's stream socket. So
every socket that carries prompts or tokens, or that workers register on, is a
ZeroMQ PLAIN server (:func:`serve_bus`): the gateway's request ROUTER and stream
SUB, and the supervisor's ``bus`` ROUTER. A :class:`ZapHandler` (ZAP, RFC 27) in
the binding process admits a connection only if it presents the instance's bus
secret, made at random by the supervisor for each run and handed to each child in
its spec, on stdin (protocol/spawn.py). A process without it never completes the
handshake: libzmq delivers nothing from it and sends nothing to it.

PLAIN rather than CURVE on ipc: the kernel already keeps the bytes between two
processes in a 0700 directory private; what was missing is proof of membership,
which PLAIN's handshake gives at no cost per message (CURVE would encrypt every
token). The handler works per mechanism, so tcp:// endpoints (workers on other
hosts) add CURVE here: a keypair per party, the client's public key checked by
the same handler. The CLI's door (``control``) and the event PUB stay open to the
same user without a secret (NULL), but the handler refuses a peer whose kernel
credentials (SO_PEERCRED / LOCAL_PEERCRED) are another uid's.
"""

from __future__ import annotations

import hmac
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from turnout.protocol.paths import UnsafePathError, ensure_private_dir, peer_credentials

__all__ = ["Endpoints", "UnsafePathError", "ZapHandler", "bind", "default_runtime_dir", "default_runtime_root",
           "ensure_runtime_dir", "join_bus", "make_socket", "new_bus_secret", "serve_bus", "serve_local",
           "unlink_ipc"]


@dataclass(frozen=True)
class Endpoints:
    """Addresses of the bound sockets of one turnout instance."""

    runtime_dir: str

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.runtime_dir}/{name}"

    @property
    def control(self) -> str:  # supervisor ROUTER: the CLI's door (no secret, same uid)
        return self._ipc("control")

    @property
    def bus(self) -> str:  # supervisor ROUTER: the gateway's and workers' (bus secret)
        return self._ipc("bus")

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


# ------------------------------------------------------------------ authentication

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27: one handler per context
DOMAIN_BUS = b"turnout-bus"  # PLAIN with the instance's bus secret
DOMAIN_LOCAL = b"turnout-local"  # NULL, from a process of the same uid


def new_bus_secret() -> str:
    return secrets.token_urlsafe(32)


def serve_bus(sock: zmq.Socket) -> None:
    """Before ``bind``: only peers holding the bus secret get through."""
    sock.setsockopt(zmq.PLAIN_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN_BUS)


def serve_local(sock: zmq.Socket) -> None:
    """Before ``bind``: any peer of the same uid, no secret (the CLI, event watchers)."""
    sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN_LOCAL)


def join_bus(sock: zmq.Socket, name: str, secret: str) -> None:
    """Before ``connect``: present the bus secret (``name`` becomes the peer's
    ``User-Id`` on the other side)."""
    sock.setsockopt(zmq.PLAIN_USERNAME, name.encode())
    sock.setsockopt(zmq.PLAIN_PASSWORD, secret.encode())


class ZapHandler(threading.Thread):
    """Answers libzmq's authentication requests for every server socket of one
    context (module docstring). It owns its REP socket; ``start()`` returns once it
    is bound, so call it before binding anything that needs it (a PLAIN server
    without a handler refuses everyone: it fails closed).

    Options:
        ctx: the context of the sockets it answers for.
        secret: the instance's bus secret.
    """

    def __init__(self, ctx: zmq.Context, secret: str) -> None:
        super().__init__(name="zap", daemon=True)
        if not secret:
            raise ValueError("the bus needs a secret")
        self.ctx = ctx
        self._secret = secret.encode()
        self._ready = threading.Event()
        self._halt = threading.Event()
        self._error: BaseException | None = None
        self.refused = 0
        self._last_log = 0.0

    def start(self) -> None:
        super().start()
        self._ready.wait(5.0)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._halt.set()
        self.join(2.0)

    def run(self) -> None:
        try:
            sock = self.ctx.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._halt.is_set():
                if sock.poll(100):
                    sock.send_multipart(self.answer(sock.recv_multipart()))
        finally:
            sock.close(0)

    def answer(self, req: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request: [version, request id, status, text, user id, metadata]."""
        if len(req) < 6:
            return [b"1.0", req[1] if len(req) > 1 else b"", b"400", b"malformed request", b"", b""]
        _version, rid, domain, address, _identity, mechanism, *creds = req
        uid, pid = peer_credentials(address.decode(errors="replace"))
        why = ""
        user = b""
        if uid is not None and uid != os.getuid():
            why = f"peer runs as uid {uid}"
        elif mechanism == b"PLAIN" and len(creds) == 2:
            user = creds[0]
            if not hmac.compare_digest(creds[1], self._secret):
                why = "wrong bus secret"
        elif mechanism == b"NULL" and domain == DOMAIN_LOCAL:
            pass
        else:
            why = f"{mechanism.decode(errors='replace')} on {domain.decode(errors='replace')} needs the bus secret"
        if why:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_log > 1.0:  # a peer retrying every few ms must not flood the log
                self._last_log = now
                import structlog  # here: the CLI imports this module and must start fast

                structlog.get_logger().warning("bus_connection_refused", reason=why, user=user.decode(errors="replace")[:64],
                            peer_uid=uid, peer_pid=pid, refused_total=self.refused)
            return [b"1.0", rid, b"400", why.encode(), b"", b""]
        return [b"1.0", rid, b"200", b"OK", user, b""]
