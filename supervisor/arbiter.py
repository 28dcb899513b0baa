"""The supervisor's arbiter: the root process of turnout.

Roles:
    * spawns the gateway and one process per configured worker slot;
    * reaps children, restarts them with backoff (policy.py), parks crash loops and
      models that fail to load;
    * kills workers whose compute-loop heartbeat went stale (hung);
    * answers typed commands on its control ROUTER (workers, gateway, CLI);
    * publishes worker state events on its PUB socket;
    * on SIGINT/SIGTERM stops everything with a timed ladder and removes its
      socket files.

Signal handlers only enqueue the signal number (and wake the poller through
``signal.set_wakeup_fd``); the loop dispatches ``handle_<name>`` (gunicorn's habit).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
import zmq

from protocol import messages as m
from protocol.config import Config, ModelConfig, encode_config
from protocol.sockets import Endpoints, bind, ensure_private_dir, make_socket, unlink_ipc
from supervisor import policy
from supervisor.process import Child, kill_now, spawn, stop_ladder
from workers.base import EXIT_MODEL_LOAD_ERROR, WorkerSpec

log = structlog.get_logger()

GATEWAY_ID = "gw0"
TICK_S = 0.1
RSS_SAMPLE_S = 1.0


class GatewaySpec(msgspec.Struct):
    id: str
    runtime_dir: str
    host: str
    port: int
    config_json: str


@dataclass
class Slot:
    """A place for one process: the gateway or one worker of a model."""

    id: str
    kind: str  # "gateway" | "worker"
    model: ModelConfig | None = None
    child: Child | None = None
    state: m.WorkerState = "starting"
    restarts: int = 0
    crashes: int = 0
    restart_at: float | None = None
    reason: str = ""
    last_hb_ns: int = 0
    rss_bytes: int = 0
    in_flight: int = 0
    ready_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Arbiter:
    """Options:
    config: the parsed configuration (``host``/``port`` already applied).
    runtime_dir: a private directory for this instance's ipc sockets.
    backoff: restart policy.
    """

    def __init__(self, config: Config, runtime_dir: Path, backoff: policy.BackoffPolicy | None = None) -> None:
        self.config = config
        self.runtime_dir = ensure_private_dir(runtime_dir)
        self.endpoints = Endpoints(str(self.runtime_dir))
        self.backoff = backoff or policy.BackoffPolicy()
        self.signals: deque[int] = deque()
        self.slots: dict[str, Slot] = {}
        self.stopping = False
        self.gateway_ready_logged = False
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(m.ToSupervisor)
        self._last_rss = 0.0
        self.ctx = zmq.Context()
        self.control = make_socket(self.ctx, zmq.ROUTER)
        self.events = make_socket(self.ctx, zmq.PUB)
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)

    # ------------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        bind(self.control, self.endpoints.control)
        bind(self.events, self.endpoints.events)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        self.slots[GATEWAY_ID] = Slot(GATEWAY_ID, "gateway")
        for mc in self.config.models:
            for i in range(mc.workers):
                sid = f"{mc.name}-{i}"
                self.slots[sid] = Slot(sid, "worker", model=mc)
        for slot in self.slots.values():
            self._spawn(slot)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # NO LOGGING, just queue the signal (the wakeup fd wakes the poller).
        self.signals.append(signum)

    def run(self) -> int:
        self.setup()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self._sig_r.fileno(), zmq.POLLIN)
        try:
            while not self.stopping:
                try:
                    events = dict(poller.poll(TICK_S * 1000))
                except zmq.ZMQError as e:
                    if e.errno == zmq.EINTR:
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
                if self.control in events:
                    self._drain_control()
                self._reap()
                self._check_heartbeats()
                self._restart_due()
                self._sample_rss()
        finally:
            self.shutdown()
        return 0

    def _dispatch_signal(self, signum: int) -> None:
        name = {signal.SIGINT: "int", signal.SIGTERM: "term", signal.SIGCHLD: "chld", signal.SIGHUP: "hup"}.get(signum)
        handler = getattr(self, f"handle_{name}", None)
        if handler is not None:
            handler()

    def handle_int(self) -> None:
        log.info("stopping", signal="SIGINT")
        self.stopping = True

    def handle_term(self) -> None:
        log.info("stopping", signal="SIGTERM")
        self.stopping = True

    def handle_chld(self) -> None:
        self._reap()

    def handle_hup(self) -> None:
        log.info("sighup_ignored", hint="restart turnout to apply config changes")

    def shutdown(self) -> None:
        """The timed stop ladder: gateway first (no new requests), then workers."""
        signal.set_wakeup_fd(-1)
        gw = self.slots.get(GATEWAY_ID)
        if gw and gw.child:
            stop_ladder([gw.child], grace_s=3.0)
        stop_ladder([s.child for s in self.slots.values() if s.child and s.kind == "worker"], grace_s=5.0)
        self.control.close(0)
        self.events.close(0)
        self.ctx.term()
        self._sig_r.close()
        self._sig_w.close()
        for ep in (self.endpoints.control, self.endpoints.events,
                   self.endpoints.gateway_requests(GATEWAY_ID), self.endpoints.gateway_streams(GATEWAY_ID)):
            unlink_ipc(ep)
        try:
            self.runtime_dir.rmdir()
        except OSError:
            pass
        log.info("stopped")

    # -------------------------------------------------------------------- children

    def _spawn(self, slot: Slot) -> None:
        slot.restart_at = None
        slot.state = "starting"
        slot.last_hb_ns = 0
        if slot.kind == "gateway":
            spec = GatewaySpec(
                id=slot.id,
                runtime_dir=str(self.runtime_dir),
                host=self.config.server.host,
                port=self.config.server.port,
                config_json=encode_config(self.config).decode(),
            )
            slot.child = spawn(slot.id, "gateway.main", [msgspec.json.encode(spec).decode()])
        else:
            assert slot.model is not None
            mc = slot.model
            wspec = WorkerSpec(
                id=slot.id,
                backend=mc.backend,
                model=mc.name,
                runtime_dir=str(self.runtime_dir),
                gateway_ids=[GATEWAY_ID],
                options=mc.options,
                path=mc.path,
                context_window=mc.context_window,
                aliases=mc.aliases,
            )
            slot.child = spawn(slot.id, "workers.main", [msgspec.json.encode(wspec).decode()])
        log.info("spawned", id=slot.id, pid=slot.child.pid, kind=slot.kind)
        self._publish(slot)

    def _reap(self) -> None:
        for slot in self.slots.values():
            child = slot.child
            if child is None:
                continue
            code = child.poll()
            if code is None:
                continue
            ran = time.monotonic() - child.started_at
            slot.child = None
            if self.stopping:
                continue
            slot.crashes = policy.next_crash_count(self.backoff, slot.crashes, ran)
            park = policy.should_park(self.backoff, slot.crashes, code, EXIT_MODEL_LOAD_ERROR)
            if slot.kind == "gateway":
                park = ""  # the gateway is always brought back
            reason = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
            slot.state = "exited"
            slot.reason = reason
            self._publish(slot, pid=child.pid)
            if park:
                slot.state = "failed"
                slot.reason = f"{park} ({reason})"
                log.error("worker_parked", id=slot.id, reason=slot.reason)
                self._publish(slot, pid=child.pid)
                continue
            delay = policy.restart_delay(self.backoff, slot.crashes)
            slot.restart_at = time.monotonic() + delay
            log.warning("child_exited", id=slot.id, pid=child.pid, reason=reason,
                        restart_in_s=round(delay, 3), crashes=slot.crashes)

    def _restart_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.child is None and slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                self._spawn(slot)

    def _check_heartbeats(self) -> None:
        now = time.monotonic_ns()
        timeout = self.config.server.heartbeat_timeout_s
        for slot in self.slots.values():
            if slot.kind != "worker" or slot.child is None or slot.state != "ready":
                continue
            if policy.heartbeat_stale(now, slot.last_hb_ns, timeout):
                log.error("worker_hung", id=slot.id, pid=slot.child.pid, silent_s=round((now - slot.last_hb_ns) / 1e9, 1))
                slot.reason = "hung: no heartbeat"
                kill_now(slot.child)

    def _sample_rss(self) -> None:
        now = time.monotonic()
        if now - self._last_rss < RSS_SAMPLE_S:
            return
        self._last_rss = now
        for slot in self.slots.values():
            if slot.child is not None:
                slot.rss_bytes = slot.child.tree_rss()

    def _publish(self, slot: Slot, pid: int = 0) -> None:
        ev = m.WorkerEvent(worker_id=slot.id, state=slot.state, pid=pid or (slot.child.pid if slot.child else 0), reason=slot.reason)
        self.events.send_multipart([m.EVENTS_TOPIC, self._enc.encode(ev)])

    # --------------------------------------------------------------------- control

    def _drain_control(self) -> None:
        while True:
            try:
                ident, raw = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # wrong frame count: not one of ours
            try:
                msg = self._dec.decode(raw)
            except msgspec.DecodeError:
                log.warning("bad_control_message", size=len(raw))
                self._reply(ident, m.ErrorReply("undecodable message"))
                continue
            self._handle(ident, msg)

    def _reply(self, ident: bytes, msg: m.FromSupervisor) -> None:
        try:
            self.control.send_multipart([ident, self._enc.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer went away

    def _handle(self, ident: bytes, msg: m.ToSupervisor) -> None:
        slot = self.slots.get(ident.decode(errors="replace"))
        if isinstance(msg, m.Heartbeat):
            if slot is not None:
                slot.last_hb_ns = time.monotonic_ns()  # arrival: robust to clock domains
                slot.in_flight = msg.in_flight
        elif isinstance(msg, m.Hello):
            if msg.protocol_version != m.PROTOCOL_VERSION:
                self._reply(ident, m.Refused(f"protocol {msg.protocol_version} != {m.PROTOCOL_VERSION}"))
                return
            if slot is not None and msg.role == "worker":
                slot.state = "loading"
                self._publish(slot)
        elif isinstance(msg, m.Ready):
            if slot is None:
                return
            slot.state = "ready"
            slot.ready_at = time.monotonic()
            slot.last_hb_ns = time.monotonic_ns()
            slot.reason = ""
            self._publish(slot)
            if slot.kind == "gateway" and not self.gateway_ready_logged:
                self.gateway_ready_logged = True
                host = self.config.server.host
                log.info("gateway_listening", url=f"http://{host}:{msg.port}")
        elif isinstance(msg, m.ListWorkers):
            self._reply(ident, m.WorkersReply(self.worker_infos()))
        elif isinstance(msg, m.RestartWorker):
            target = self.slots.get(msg.worker_id)
            if target is None or target.kind != "worker":
                self._reply(ident, m.ErrorReply(f"no worker {msg.worker_id!r}"))
                return
            if target.child is not None:
                log.warning("worker_restart_requested", id=target.id, reason=msg.reason)
                target.reason = msg.reason
                kill_now(target.child)
            elif target.state == "failed":
                target.crashes = 0
                self._spawn(target)
            self._reply(ident, m.Ack())
        elif isinstance(msg, m.Shutdown):
            self._reply(ident, m.Ack("stopping"))
            self.stopping = True

    def worker_infos(self) -> list[m.WorkerInfo]:
        now = time.monotonic()
        out = []
        for s in self.slots.values():
            if s.kind != "worker":
                continue
            assert s.model is not None
            out.append(
                m.WorkerInfo(
                    id=s.id,
                    backend=s.model.backend,
                    model=s.model.name,
                    pid=s.child.pid if s.child else 0,
                    state=s.state,
                    rss_bytes=s.rss_bytes,
                    in_flight=s.in_flight,
                    restarts=s.restarts,
                    uptime_s=round(now - s.child.started_at, 3) if s.child else 0.0,
                    reason=s.reason,
                )
            )
        return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
