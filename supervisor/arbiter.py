"""The supervisor's arbiter: the root process of turnout.

Roles:
    * spawns the gateway and the workers of each model (``workers`` of them at
      start; ``turnout scale`` / ``load`` / ``evict`` and load on demand change that
      at run time);
    * reaps children, restarts them with backoff (policy.py), parks crash loops and
      models that fail to load, with the reason in the worker table;
    * kills workers whose compute-loop heartbeat went stale (hung);
    * samples available memory and every worker's RSS, evicts under pressure and
      admits or refuses loads (memory.py: pure policy);
    * unloads workers idle longer than their keep-alive;
    * stops a worker it no longer wants by draining it first: the gateway stops
      routing to it, the arbiter waits for its in-flight requests to finish
      (bounded), then SIGTERM, grace, SIGKILL of its tree, reap (never blocking the
      loop);
    * answers typed commands on two ROUTERs: ``bus`` for the gateway and the
      workers (a ZeroMQ PLAIN handshake with the instance's bus secret, which it
      makes at start and hands each child in its spec: protocol/sockets.py), and
      ``control``, the CLI's door (no secret; a peer of another uid is refused, and
      only commands are taken there, never a worker's Hello, Ready or Heartbeat);
    * publishes worker state and memory events on its PUB socket;
    * on SIGINT/SIGTERM (or ``turnout down``) stops everything with a timed ladder
      and removes its socket files and pidfile.

The arbiter owns the sockets, the signals and the loop; the processes live in
pools (supervisor/pool.py: one per model, and the gateway's), which a fleet
(supervisor/fleet.py) holds together with memory admission and eviction; each
message is answered by its handler in a table (supervisor/handlers.py), and a
command's reply carries its ``call_id``. The fleet and the handlers touch no
socket and no real process, so they are unit-tested with fakes.

Signal handlers only enqueue the signal number (and wake the poller through
``signal.set_wakeup_fd``); the loop dispatches ``handle_<name>`` (gunicorn's habit).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import structlog
import zmq

from turnout.protocol import messages as m
from turnout.protocol.config import Config
from turnout.protocol.paths import ensure_private_dir, open_private, peer_credentials
from turnout.protocol.sockets import (
    Endpoints,
    ZapHandler,
    bind,
    ensure_runtime_dir,
    make_socket,
    new_bus_secret,
    serve_bus,
    serve_local,
    unlink_ipc,
)
from turnout.supervisor import memory, policy
from turnout.supervisor.control import instance_state_dir, state_base
from turnout.supervisor.fleet import GATEWAY_ID, Fleet
from turnout.supervisor.handlers import Handlers
from turnout.supervisor.pool import MB, ProcessHandle, Slot
from turnout.supervisor.process import Child, spawn, stop_ladder

log = structlog.get_logger()

TICK_S = 0.1


class Arbiter:
    """Options:
    config: the parsed configuration (``host``/``port`` already applied); its
        ``[supervisor]`` section sets watermarks, keep-alive, drains and backoff.
    runtime_dir: a private directory for this instance's ipc sockets.
    backoff: restart policy (default: from the config).
    pidfile: written at start, removed at exit (daemon mode).
    runtime_base: the first directory above ``runtime_dir`` that is not turnout's
        own (default: its parent); every directory below it is made 0700 and
        checked, and one another user made or could change is refused
        (UnsafePathError, raised here: before anything is bound or spawned).
    """

    def __init__(self, config: Config, runtime_dir: Path, backoff: policy.BackoffPolicy | None = None,
                 pidfile: Path | None = None, runtime_base: Path | None = None) -> None:
        self.config = config
        sc = config.supervisor

        def tightened(msg: str) -> None:
            log.warning("private_dir_tightened", detail=msg)

        self.runtime_dir = ensure_runtime_dir(runtime_dir, runtime_base, tightened)
        # The state directory (pidfile, daemon log, routing.json) likewise, before
        # the gateway writes into it.
        if config.server.port:
            ensure_private_dir(instance_state_dir(config.server.port), state_base(), tightened)
        self.endpoints = Endpoints(str(self.runtime_dir))
        self.pidfile = pidfile
        self.signals: deque[int] = deque()
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(m.ToSupervisor)
        self.ctx = zmq.Context()
        self.bus_secret = new_bus_secret()
        self.zap = ZapHandler(self.ctx, self.bus_secret)
        self.control = make_socket(self.ctx, zmq.ROUTER)  # the CLI's door
        serve_local(self.control)
        self.bus = make_socket(self.ctx, zmq.ROUTER)  # the gateway's and the workers'
        serve_bus(self.bus)
        self.events = make_socket(self.ctx, zmq.PUB)
        serve_local(self.events)
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)
        self.fleet = Fleet(
            config, self.runtime_dir, self.bus_secret,
            backoff or policy.backoff_from_config(sc.restart_first_s, sc.restart_base_s, sc.restart_max_s,
                                                  sc.healthy_after_s, sc.crash_loop_restarts),
            launch=self._launch, clock=time.monotonic, sample_memory=memory.sample_available,
            publish=self._publish, publish_memory=self._publish_memory)
        self.handlers = Handlers(self.fleet)

    # ------------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        self.zap.start()  # before binding: connections are authenticated from the first
        bind(self.control, self.endpoints.control)
        bind(self.bus, self.endpoints.bus)
        bind(self.events, self.endpoints.events)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        if self.pidfile is not None:
            ensure_private_dir(self.pidfile.parent)
            fd = open_private(self.pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
        w = self.fleet.watermarks
        log.info("memory_watermarks", soft_mb=round(w.soft_mb), hard_mb=round(w.hard_mb),
                 total_mb=round(self.fleet.total_bytes / MB))
        self.fleet.start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # NO LOGGING, just queue the signal (the wakeup fd wakes the poller).
        self.signals.append(signum)

    def run(self) -> int:
        self.setup()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.bus, zmq.POLLIN)
        poller.register(self._sig_r.fileno(), zmq.POLLIN)
        try:
            while not self.fleet.stopping:
                try:
                    events = dict(poller.poll(int(TICK_S * 1000)))
                except zmq.ZMQError as e:
                    if e.errno == errno.EINTR:
                        continue
                    raise
                if self._sig_r.fileno() in events:
                    try:
                        while self._sig_r.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                while self.signals:
                    self._dispatch_signal(self.signals.popleft())
                if self.bus in events:
                    self._drain_control(self.bus)
                if self.control in events:
                    self._drain_control(self.control)
                self.fleet.tick()
        finally:
            self.shutdown()
        return 0

    def _dispatch_signal(self, signum: int) -> None:
        names: dict[int, str] = {signal.SIGINT: "int", signal.SIGTERM: "term", signal.SIGCHLD: "chld",
                                 signal.SIGHUP: "hup"}
        name = names.get(signum)
        handler = getattr(self, f"handle_{name}", None)
        if handler is not None:
            handler()

    def handle_int(self) -> None:
        log.info("stopping", signal="SIGINT")
        self.fleet.stopping = True

    def handle_term(self) -> None:
        log.info("stopping", signal="SIGTERM")
        self.fleet.stopping = True

    def handle_chld(self) -> None:
        self.fleet.reap()

    def handle_hup(self) -> None:
        log.info("sighup_ignored", hint="restart turnout to apply config changes")

    def shutdown(self) -> None:
        """The timed stop ladder: gateway first (no new requests), then workers."""
        signal.set_wakeup_fd(-1)
        grace = self.config.supervisor.stop_grace_s
        gw = self.fleet.gateway_slot()
        if gw and isinstance(gw.child, Child):
            stop_ladder([gw.child], grace_s=min(3.0, grace))
        stop_ladder([s.child for pool in self.fleet.pools.values() for s in pool.slots.values()
                     if isinstance(s.child, Child)], grace_s=grace)
        self.control.close(0)
        self.bus.close(0)
        self.events.close(0)
        self.zap.stop()
        self.ctx.term()
        self._sig_r.close()
        self._sig_w.close()
        for ep in (self.endpoints.control, self.endpoints.bus, self.endpoints.events,
                   self.endpoints.gateway_requests(GATEWAY_ID), self.endpoints.gateway_streams(GATEWAY_ID)):
            unlink_ipc(ep)
        try:
            self.runtime_dir.rmdir()
        except OSError:
            pass
        if self.pidfile is not None:
            try:
                if self.pidfile.read_text().strip() == str(os.getpid()):
                    self.pidfile.unlink()
            except OSError:
                pass
        log.info("stopped")

    # -------------------------------------------------------- the fleet's hands

    def _launch(self, child_id: str, module: str, spec: bytes) -> ProcessHandle:
        return spawn(child_id, module, spec, spec_dir=str(self.runtime_dir))

    def _publish(self, slot: Slot, pid: int = 0) -> None:
        ev = m.WorkerEvent(worker_id=slot.id, state=slot.state, pid=pid or (slot.child.pid if slot.child else 0),
                           reason=slot.reason, model=slot.model.name if slot.model else "")
        self.events.send_multipart([m.EVENTS_TOPIC, self._enc.encode(ev)])

    def _publish_memory(self, ev: m.MemoryEvent) -> None:
        self.events.send_multipart([m.EVENTS_TOPIC, self._enc.encode(ev)])

    # --------------------------------------------------------------------- control

    def _drain_control(self, sock: zmq.Socket) -> None:
        """Every message waiting on ``sock`` (``bus`` or ``control``), handled and
        answered on the same socket."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue  # wrong frame count: not one of ours
            ident, raw = frames[0].bytes, frames[1].bytes
            try:
                msg = self._dec.decode(raw)
            except msgspec.DecodeError:
                log.warning("bad_control_message", size=len(raw))
                self._reply(sock, ident, m.ErrorReply("undecodable message"))
                continue
            if sock is self.control and not isinstance(msg, m.Command):
                # Registration and liveness are the bus's, behind the secret: a
                # Hello, Ready or Heartbeat on the CLI's door is nobody's.
                log.warning("control_message_refused", type=type(msg).__name__)
                continue
            if isinstance(msg, m.Hello) and not self._hello_from_its_process(ident, msg, frames[1]):
                continue
            reply = self.handlers.handle(ident.decode(errors="replace"), msg)
            if reply is not None:
                self._reply(sock, ident, reply)

    def _hello_from_its_process(self, ident: bytes, msg: m.Hello, frame: zmq.Frame) -> bool:
        """A child's Hello must come from the process spawned for that slot, where
        the kernel says which process is at the other end (Linux: SO_PEERCRED)."""
        slot = self.fleet.slot(ident.decode(errors="replace"))
        try:
            addr = frame.get("Peer-Address")
        except zmq.ZMQError:
            return True
        _, peer_pid = peer_credentials(addr if isinstance(addr, str) else None)
        if slot is None or slot.child is None or peer_pid is None or peer_pid == slot.child.pid:
            return True
        log.warning("hello_from_another_process", id=slot.id, pid=slot.child.pid, peer_pid=peer_pid)
        return False

    def _reply(self, sock: zmq.Socket, ident: bytes, msg: m.FromSupervisor) -> None:
        try:
            sock.send_multipart([ident, self._enc.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer went away


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
