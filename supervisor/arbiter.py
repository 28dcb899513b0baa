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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
import zmq

from protocol import messages as m
from protocol.config import Config, ModelConfig, encode_config
from protocol.exits import EXIT_MODEL_LOAD_ERROR
from protocol.paths import ensure_private_dir, open_private, peer_credentials
from protocol.sockets import (
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
from protocol.specs import WorkerSpec
from supervisor import memory, policy
from supervisor.control import instance_state_dir, state_base
from supervisor.process import Child, kill_now, spawn, stop_ladder

log = structlog.get_logger()

GATEWAY_ID = "gw0"
TICK_S = 0.1
MB = 1024 * 1024


class GatewaySpec(msgspec.Struct):
    id: str
    runtime_dir: str
    host: str
    port: int
    config_json: str
    bus_secret: str = ""  # the instance's bus secret (protocol/sockets.py)


@dataclass
class Slot:
    """A place for one process: the gateway or one worker of a model.

    A slot that is ``retiring`` is being stopped on purpose (scale down, eviction,
    idle unload): it is drained, stopped and then removed, never restarted."""

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
    in_flight: int = 0  # from the worker's heartbeat
    ready_at: float = 0.0
    spawned_at: float = 0.0
    # the gateway's view (GatewayReport)
    gw_in_flight: int = 0
    gw_routing: bool = False
    gw_report_at: float = 0.0
    last_used: float = 0.0
    # stopping on purpose
    retiring: bool = False
    stop_reason: str = ""
    drain_started: float = 0.0
    drain_timeout_s: float = 0.0
    kill_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
        self.backoff = backoff or policy.backoff_from_config(
            sc.restart_first_s, sc.restart_base_s, sc.restart_max_s, sc.healthy_after_s, sc.crash_loop_restarts)
        self.pidfile = pidfile
        self.signals: deque[int] = deque()
        self.slots: dict[str, Slot] = {}
        self.models: dict[str, ModelConfig] = {mc.name: mc for mc in config.models}
        self.desired: dict[str, int] = {mc.name: mc.workers for mc in config.models}
        self.model_reason: dict[str, str] = {}
        # model -> workers being evicted to make room for it; loaded once they are gone
        self.pending_loads: dict[str, set[str]] = {}
        self.stopping = False
        self.gateway_ready_logged = False
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(m.ToSupervisor)
        # memory
        _, total = memory.sample_available()
        self.total_bytes = total
        self.available_bytes = total
        self.watermarks = memory.resolve_watermarks(
            total / MB, sc.soft_available_mb, sc.hard_available_mb, sc.hysteresis_mb, sc.cooldown_s, sc.headroom_mb)
        self.level: memory.Level = "none"
        self._last_sample = 0.0
        self._last_eviction = -1e9
        self.ctx = zmq.Context()
        self.bus_secret = new_bus_secret()
        self.zap = ZapHandler(self.ctx, self.bus_secret)
        self.control = make_socket(self.ctx, zmq.ROUTER)  # the CLI's door
        serve_local(self.control)
        self.bus = make_socket(self.ctx, zmq.ROUTER)  # the gateway's and the workers'
        serve_bus(self.bus)
        self.events = make_socket(self.ctx, zmq.PUB)
        serve_local(self.events)
        self._replying_on = self.control  # the socket the message being handled came in on
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)

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
        log.info("memory_watermarks", soft_mb=round(self.watermarks.soft_mb), hard_mb=round(self.watermarks.hard_mb),
                 total_mb=round(self.total_bytes / MB))
        gw = Slot(GATEWAY_ID, "gateway")
        self.slots[GATEWAY_ID] = gw
        self._spawn(gw)
        for mc in self.config.models:
            self._reconcile(mc.name)

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
            while not self.stopping:
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
                self._reap()
                self._check_heartbeats()
                self._restart_due()
                self._advance_stops()
                self._sample_memory()
                self._idle_unload()
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
        grace = self.config.supervisor.stop_grace_s
        gw = self.slots.get(GATEWAY_ID)
        if gw and gw.child:
            stop_ladder([gw.child], grace_s=min(3.0, grace))
        stop_ladder([s.child for s in self.slots.values() if s.child and s.kind == "worker"], grace_s=grace)
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

    # -------------------------------------------------------------------- children

    def _spawn(self, slot: Slot) -> None:
        slot.restart_at = None
        slot.state = "starting"
        slot.last_hb_ns = 0
        slot.gw_routing = False
        slot.gw_in_flight = 0
        slot.in_flight = 0
        slot.spawned_at = time.monotonic()
        slot.last_used = slot.spawned_at
        if slot.kind == "gateway":
            spec = GatewaySpec(
                id=slot.id,
                runtime_dir=str(self.runtime_dir),
                host=self.config.server.host,
                port=self.config.server.port,
                config_json=encode_config(self.config).decode(),
                bus_secret=self.bus_secret,
            )
            slot.child = spawn(slot.id, "gateway.main", msgspec.json.encode(spec), spec_dir=str(self.runtime_dir))
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
                bus_secret=self.bus_secret,
            )
            slot.child = spawn(slot.id, "workers.main", msgspec.json.encode(wspec), spec_dir=str(self.runtime_dir))
        log.info("spawned", id=slot.id, pid=slot.child.pid, kind=slot.kind)
        self._publish(slot)

    def _reap(self) -> None:
        for slot in list(self.slots.values()):
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
            reason = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
            if slot.retiring:
                # Stopped on purpose: removed, never restarted, not a crash.
                slot.state = "exited"
                slot.reason = slot.stop_reason
                self._publish(slot, pid=child.pid)
                del self.slots[slot.id]
                log.info("worker_stopped", id=slot.id, pid=child.pid, reason=slot.stop_reason, exit=reason)
                self._victim_gone(slot.id)
                continue
            slot.crashes = policy.next_crash_count(self.backoff, slot.crashes, ran)
            park = policy.should_park(self.backoff, slot.crashes, code, EXIT_MODEL_LOAD_ERROR)
            if slot.kind == "gateway":
                park = ""  # the gateway is always brought back
            if slot.reason.startswith("hung"):
                reason = f"{slot.reason}; {reason}"
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
        for slot in list(self.slots.values()):
            if slot.child is None and slot.restart_at is not None and now >= slot.restart_at:
                if slot.kind == "worker" and not self._restart_admitted(slot, now):
                    continue
                slot.restarts += 1
                self._spawn(slot)

    def _restart_admitted(self, slot: Slot, now: float) -> bool:
        """A crashed worker comes back through admission like any load: a crash
        under memory pressure (an OOM kill, say) is not restarted into the same
        shortage. Refused: tried again after ``retry_after_s``; evictions: once
        the idle victims are gone."""
        assert slot.model is not None
        mc = slot.model
        avail_mb = self.available_bytes / MB
        others = [w for w in self._snaps() if w.id != slot.id]
        adm = memory.admit(self.expected_mb(mc), mc.priority, avail_mb, self.level, others, self.watermarks)
        if adm.decision == "admit":
            return True
        if adm.decision == "evict":
            log.info("restart_evicts", id=slot.id, victims=list(adm.evict), reason=adm.reason)
            for vid in adm.evict:
                self._evict_slot(self.slots[vid], f"evicted to make room for {mc.name} (restart)", drain=True)
            slot.restart_at = now + self.config.supervisor.cooldown_s
            return False
        reason = f"restart waits for memory: {adm.reason}"
        if slot.reason != reason:
            log.warning("restart_deferred", id=slot.id, reason=adm.reason)
            slot.reason = reason
            self._publish(slot)
        slot.restart_at = now + self.config.supervisor.retry_after_s
        return False

    def _check_heartbeats(self) -> None:
        now = time.monotonic_ns()
        timeout = self.config.server.heartbeat_timeout_s
        for slot in self.slots.values():
            if slot.kind != "worker" or slot.child is None or slot.state not in ("ready", "draining"):
                continue
            if policy.heartbeat_stale(now, slot.last_hb_ns, timeout):
                log.error("worker_hung", id=slot.id, pid=slot.child.pid, silent_s=round((now - slot.last_hb_ns) / 1e9, 1))
                slot.reason = "hung: no heartbeat"
                slot.last_hb_ns = now  # once: the kill is under way
                kill_now(slot.child)

    def _publish(self, slot: Slot, pid: int = 0) -> None:
        ev = m.WorkerEvent(worker_id=slot.id, state=slot.state, pid=pid or (slot.child.pid if slot.child else 0),
                           reason=slot.reason, model=slot.model.name if slot.model else "")
        self.events.send_multipart([m.EVENTS_TOPIC, self._enc.encode(ev)])

    # ------------------------------------------------------ desired workers, stops

    def _worker_slots(self, model: str) -> list[Slot]:
        """The slots of a model that count towards its desired number."""
        return [s for s in self.slots.values()
                if s.kind == "worker" and s.model is not None and s.model.name == model and not s.retiring]

    def _new_slot(self, mc: ModelConfig) -> Slot:
        i = 0
        while f"{mc.name}-{i}" in self.slots:
            i += 1
        slot = Slot(f"{mc.name}-{i}", "worker", model=mc)
        self.slots[slot.id] = slot
        return slot

    def _reconcile(self, model: str) -> None:
        """Spawn or retire workers of ``model`` until it has ``desired`` of them."""
        mc = self.models[model]
        have = self._worker_slots(model)
        want = max(0, self.desired.get(model, 0))
        if len(have) < want:
            for _ in range(want - len(have)):
                self._spawn(self._new_slot(mc))
        elif len(have) > want:
            views = [policy.SlotView(s.id, s.state, max(s.in_flight, s.gw_in_flight), s.spawned_at) for s in have]
            for sid in policy.scale_down_order(views, len(have) - want):
                self._retire(self.slots[sid], "scaled down", drain=True)

    def _retire(self, slot: Slot, reason: str, *, drain: bool, timeout_s: float | None = None) -> None:
        """Stop a worker on purpose. A ready worker is drained first: the gateway is
        told (``draining`` event) and stops routing to it; the arbiter waits for its
        in-flight requests to end (at most ``timeout_s``) before SIGTERM."""
        if slot.retiring:
            return
        slot.retiring = True
        slot.stop_reason = reason
        slot.reason = reason
        if slot.child is None:  # parked, or waiting for a restart: just forget it
            slot.state = "exited"
            self._publish(slot)
            del self.slots[slot.id]
            self._victim_gone(slot.id)
            return
        if drain and slot.state == "ready":
            slot.state = "draining"
            slot.drain_started = time.monotonic()
            slot.drain_timeout_s = self.config.supervisor.drain_timeout_s if timeout_s is None else timeout_s
            log.info("worker_draining", id=slot.id, reason=reason)
            self._publish(slot)
        else:
            self._terminate(slot)

    def _terminate(self, slot: Slot) -> None:
        """SIGTERM now, SIGKILL of the tree after the grace (``_advance_stops``)."""
        assert slot.child is not None
        slot.state = "stopping"
        slot.kill_at = time.monotonic() + self.config.supervisor.stop_grace_s
        self._publish(slot)
        try:
            slot.child.popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _gateway_up(self) -> bool:
        gw = self.slots.get(GATEWAY_ID)
        return gw is not None and gw.child is not None and gw.state == "ready"

    def _advance_stops(self) -> None:
        now = time.monotonic()
        gateway_up = self._gateway_up()
        for slot in list(self.slots.values()):
            if slot.child is None:
                continue
            if slot.state == "draining":
                view = policy.DrainView(
                    acked=slot.gw_report_at > slot.drain_started and not slot.gw_routing,
                    gateway_in_flight=slot.gw_in_flight, worker_in_flight=slot.in_flight,
                    gateway_up=gateway_up, started=slot.drain_started, timeout_s=slot.drain_timeout_s)
                why = policy.drain_finished(view, now)
                if why:
                    log.info("worker_drained", id=slot.id, outcome=why, waited_s=round(now - slot.drain_started, 3))
                    self._terminate(slot)
            elif slot.state == "stopping" and slot.kill_at is not None and now >= slot.kill_at:
                log.warning("worker_stop_overdue", id=slot.id, pid=slot.child.pid)
                slot.kill_at = None
                kill_now(slot.child)

    def _victim_gone(self, slot_id: str) -> None:
        """A worker evicted to make room has gone: load what was waiting for it."""
        for model, victims in list(self.pending_loads.items()):
            victims.discard(slot_id)
            if not victims:
                del self.pending_loads[model]
                if not self.stopping:
                    self.desired[model] = max(1, self.desired.get(model, 0))
                    self._reconcile(model)

    # ---------------------------------------------------------------------- memory

    def _snaps(self) -> list[memory.WorkerSnap]:
        out = []
        for s in self.slots.values():
            if s.kind != "worker" or s.model is None or s.retiring or s.child is None:
                continue
            out.append(memory.WorkerSnap(
                id=s.id, model=s.model.name, priority=s.model.priority, rss_mb=s.rss_bytes / MB,
                in_flight=max(s.in_flight, s.gw_in_flight), last_used=s.last_used, state=s.state))
        return out

    def _sample_memory(self) -> None:
        now = time.monotonic()
        if now - self._last_sample < self.config.supervisor.sample_interval_s:
            return
        self._last_sample = now
        for slot in self.slots.values():
            if slot.child is not None:
                slot.rss_bytes = slot.child.tree_rss()
        self.available_bytes, self.total_bytes = memory.sample_available()
        avail_mb = self.available_bytes / MB
        level = memory.next_level(self.level, avail_mb, self.watermarks)
        if level != self.level:
            log.warning("memory_pressure", pressure=level, previous=self.level, available_mb=round(avail_mb),
                        soft_mb=round(self.watermarks.soft_mb), hard_mb=round(self.watermarks.hard_mb))
            self.level = level
            self.events.send_multipart([m.EVENTS_TOPIC, self._enc.encode(m.MemoryEvent(level, self.available_bytes))])
        plan = memory.plan_eviction(self.level, self._snaps(), now, self._last_eviction, self.watermarks)
        if plan is None:
            return
        slot = self.slots[plan.worker_id]
        self._last_eviction = now
        assert slot.model is not None
        log.warning("memory_evict", id=slot.id, model=slot.model.name, pressure=self.level, drain=plan.drain,
                    available_mb=round(avail_mb), rss_mb=round(slot.rss_bytes / MB))
        self._evict_slot(slot, plan.reason, drain=True,
                         timeout_s=self.config.supervisor.hard_drain_s if plan.drain else None)

    def _evict_slot(self, slot: Slot, reason: str, *, drain: bool, timeout_s: float | None = None) -> None:
        """Stop one worker and lower its model's desired count, so it is not
        respawned: the model comes back on demand or with ``turnout load``."""
        assert slot.model is not None
        name = slot.model.name
        self.desired[name] = max(0, self.desired.get(name, 0) - 1)
        self.model_reason[name] = reason
        self._retire(slot, reason, drain=drain, timeout_s=timeout_s)

    def _idle_unload(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.kind != "worker" or slot.model is None or slot.retiring or slot.child is None:
                continue
            keep = slot.model.keep_alive_s
            if keep is None:
                keep = self.config.supervisor.keep_alive_s
            if policy.idle_expired(now, slot.last_used, keep, max(slot.in_flight, slot.gw_in_flight), slot.state):
                log.info("worker_idle_unload", id=slot.id, idle_s=round(now - slot.last_used, 1))
                self._evict_slot(slot, f"unloaded: idle for {keep:g} s", drain=True)

    def expected_mb(self, mc: ModelConfig) -> float:
        if mc.expected_mb > 0:
            return mc.expected_mb
        if mc.backend == "llama_cpp":
            # "" is the bundled model, a name a registered one: their files, if there yet.
            from workers.models import locate  # late: the supervisor seldom needs it

            path = locate(mc.path)
            return memory.gguf_footprint_mb(str(path), mc.context_window) if path is not None else 0.0
        return 0.0

    def _admit(self, mc: ModelConfig) -> m.FromSupervisor | None:
        """Admission for one more worker of ``mc``: None when it may start now, else
        the reply to send (a refusal, or an Ack when it waits for evictions)."""
        avail_mb = self.available_bytes / MB
        adm = memory.admit(self.expected_mb(mc), mc.priority, avail_mb, self.level, self._snaps(), self.watermarks)
        if adm.decision == "admit":
            return None
        if adm.decision == "refuse":
            log.warning("load_refused", model=mc.name, reason=adm.reason)
            return m.LoadRefused(f"cannot load model {mc.name!r} now: {adm.reason}",
                                 retry_after_s=self.config.supervisor.retry_after_s)
        log.info("load_evicts", model=mc.name, victims=list(adm.evict), reason=adm.reason)
        self.pending_loads[mc.name] = set(adm.evict)
        for vid in adm.evict:
            self._evict_slot(self.slots[vid], f"evicted to make room for {mc.name}", drain=True)
        return m.Ack("loading after evictions")

    # --------------------------------------------------------------------- control

    def _drain_control(self, sock: zmq.Socket) -> None:
        """Every message waiting on ``sock`` (``bus`` or ``control``), handled and
        answered on the same socket."""
        self._replying_on = sock
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
                self._reply(ident, m.ErrorReply("undecodable message"))
                continue
            if sock is self.control and not isinstance(msg, m.Command):
                # Registration and liveness are the bus's, behind the secret: a
                # Hello, Ready or Heartbeat on the CLI's door is nobody's.
                log.warning("control_message_refused", type=type(msg).__name__)
                continue
            if isinstance(msg, m.Hello) and not self._hello_from_its_process(ident, msg, frames[1]):
                continue
            self._handle(ident, msg)

    def _hello_from_its_process(self, ident: bytes, msg: m.Hello, frame: zmq.Frame) -> bool:
        """A child's Hello must come from the process spawned for that slot, where
        the kernel says which process is at the other end (Linux: SO_PEERCRED)."""
        slot = self.slots.get(ident.decode(errors="replace"))
        try:
            addr = frame.get("Peer-Address")
        except zmq.ZMQError:
            return True
        _, peer_pid = peer_credentials(addr if isinstance(addr, str) else None)
        if slot is None or slot.child is None or peer_pid is None or peer_pid == slot.child.pid:
            return True
        log.warning("hello_from_another_process", id=slot.id, pid=slot.child.pid, peer_pid=peer_pid)
        return False

    def _reply(self, ident: bytes, msg: m.FromSupervisor) -> None:
        try:
            self._replying_on.send_multipart([ident, self._enc.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer went away

    def _handle(self, ident: bytes, msg: m.ToSupervisor) -> None:
        slot = self.slots.get(ident.decode(errors="replace"))
        if isinstance(msg, m.Heartbeat):
            if slot is not None:
                slot.last_hb_ns = time.monotonic_ns()  # arrival: robust to clock domains
                slot.in_flight = msg.in_flight
        elif isinstance(msg, m.GatewayReport):
            self._on_report(msg)
        elif isinstance(msg, m.Hello):
            if msg.protocol_version != m.PROTOCOL_VERSION:
                self._reply(ident, m.Refused(f"protocol {msg.protocol_version} != {m.PROTOCOL_VERSION}"))
                return
            if slot is not None and msg.role == "worker" and not slot.retiring:
                slot.state = "loading"
                self._publish(slot)
        elif isinstance(msg, m.Ready):
            if slot is None or slot.retiring:
                return
            slot.state = "ready"
            slot.ready_at = time.monotonic()
            slot.last_used = slot.ready_at
            slot.last_hb_ns = time.monotonic_ns()
            slot.reason = ""
            if slot.model is not None:
                self.model_reason.pop(slot.model.name, None)
            self._publish(slot)
            if slot.kind == "gateway" and not self.gateway_ready_logged:
                self.gateway_ready_logged = True
                host = self.config.server.host
                log.info("gateway_listening", url=f"http://{host}:{msg.port}")
        elif isinstance(msg, m.ListWorkers):
            self._reply(ident, m.WorkersReply(self.worker_infos()))
        elif isinstance(msg, m.Status):
            self._reply(ident, self.status())
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
        elif isinstance(msg, m.ScaleModel):
            self._reply(ident, self.scale(msg.target, msg.workers))
        elif isinstance(msg, m.LoadModel):
            self._reply(ident, self.load(msg.model, unpark=msg.unpark))
        elif isinstance(msg, m.EvictModel):
            self._reply(ident, self.evict(msg.model))
        elif isinstance(msg, m.Shutdown):
            self._reply(ident, m.Ack("stopping"))
            log.info("stopping", requested_by="control")
            self.stopping = True

    def _on_report(self, rep: m.GatewayReport) -> None:
        now = time.monotonic()
        seen = set()
        for wl in rep.workers:
            slot = self.slots.get(wl.id)
            if slot is None or slot.kind != "worker":
                continue
            seen.add(wl.id)
            slot.gw_in_flight = wl.in_flight
            slot.gw_routing = wl.routing
            slot.gw_report_at = now
            slot.last_used = max(slot.last_used, now - wl.idle_s)
            if slot.state == "draining" and wl.routing and now - slot.drain_started > 1.0:
                self._publish(slot)  # the gateway missed the event (it restarted): again
        for slot in self.slots.values():
            if slot.state == "draining" and slot.id not in seen:
                # the gateway holds nothing there and sends it nothing
                slot.gw_in_flight, slot.gw_routing, slot.gw_report_at = 0, False, now

    def _find_model(self, name: str) -> ModelConfig | None:
        if name in self.models:
            return self.models[name]
        return self.config.resolve_model(name)

    def scale(self, target: str, n: int) -> m.FromSupervisor:
        """``turnout scale``: a model's name (or alias), or a backend (every model of
        it). Scaling up passes admission worker by worker."""
        if n < 0:
            return m.ErrorReply("the number of workers must be >= 0")
        mc = self._find_model(target)
        models = [mc] if mc is not None else [c for c in self.models.values() if c.backend == target]
        if not models:
            names = ", ".join(sorted(self.models)) or "none"
            return m.ErrorReply(f"no model or backend {target!r} (models: {names})")
        refused: list[str] = []
        deferred: list[str] = []
        for c in models:
            have = len(self._worker_slots(c.name))
            self.desired[c.name] = min(n, have)  # scaling down happens here
            self._reconcile(c.name)
            for _ in range(n - have):  # scaling up: one admission per worker
                reply = self._admit(c)
                if isinstance(reply, m.LoadRefused):
                    refused.append(reply.message)
                    break
                if reply is not None:  # evicting idle workers first; one more after
                    deferred.append(f"{c.name}: one more worker once evictions finish")
                    break
                self.desired[c.name] += 1
                self._reconcile(c.name)
            log.info("scaled", model=c.name, workers=self.desired[c.name], requested=n)
        got = "scaled to " + ", ".join(f"{c.name}={self.desired[c.name]}" for c in models)
        if refused:
            return m.ErrorReply("; ".join([got, *refused, *deferred]))
        return m.Ack("; ".join([got, *deferred]))

    def load(self, name: str, *, unpark: bool = False) -> m.FromSupervisor:
        """Make sure ``name`` has a worker: load on demand (gateway) and ``turnout
        load`` (which also un-parks a failed model)."""
        mc = self._find_model(name)
        if mc is None:
            return m.ErrorReply(f"no model {name!r} in the configuration")
        slots = self._worker_slots(mc.name)
        failed = [s for s in slots if s.state == "failed"]
        if failed and unpark:
            for s in failed:
                log.info("worker_unparked", id=s.id)
                s.crashes = 0
                s.reason = ""
                self._spawn(s)
            return m.Ack(f"restarting {len(failed)} parked worker(s) of {mc.name}")
        live = [s for s in slots if s.state != "failed"]
        if live:
            return m.Ack("running")
        if failed:
            return m.LoadRefused(f"model {mc.name!r} is parked: {failed[0].reason}; "
                                 f"`turnout load {mc.name}` tries it again")
        if mc.name in self.pending_loads:
            return m.Ack("loading after evictions")
        refused = self._admit(mc)
        if refused is not None:
            return refused
        self.desired[mc.name] = max(1, self.desired.get(mc.name, 0))
        self.model_reason.pop(mc.name, None)
        log.info("model_load", model=mc.name)
        self._reconcile(mc.name)
        return m.Ack("loading")

    def evict(self, name: str) -> m.FromSupervisor:
        mc = self._find_model(name)
        if mc is None:
            return m.ErrorReply(f"no model {name!r} in the configuration")
        slots = self._worker_slots(mc.name)
        self.desired[mc.name] = 0
        self.model_reason[mc.name] = "evicted by request"
        self.pending_loads.pop(mc.name, None)
        for s in slots:
            self._retire(s, "evicted by request", drain=True)
        return m.Ack(f"evicting {len(slots)} worker(s) of {mc.name}")

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
                    in_flight=max(s.in_flight, s.gw_in_flight),
                    restarts=s.restarts,
                    uptime_s=round(now - s.child.started_at, 3) if s.child else 0.0,
                    reason=s.reason,
                    priority=s.model.priority,
                    idle_s=round(now - s.last_used, 3) if s.child else 0.0,
                    crashes=s.crashes,
                )
            )
        return out

    def status(self) -> m.StatusReply:
        gw = self.slots.get(GATEWAY_ID)
        models = []
        for mc in self.models.values():
            running = len(self._worker_slots(mc.name))
            models.append(m.ModelInfo(
                name=mc.name, backend=mc.backend, desired=self.desired.get(mc.name, 0), running=running,
                priority=mc.priority, expected_mb=round(self.expected_mb(mc), 1),
                reason=self.model_reason.get(mc.name, "")))
        return m.StatusReply(
            workers=self.worker_infos(), models=models, supervisor_pid=os.getpid(),
            gateway_pid=gw.child.pid if gw and gw.child else 0, gateway_restarts=gw.restarts if gw else 0,
            available_bytes=self.available_bytes, total_bytes=self.total_bytes, pressure=self.level,
            soft_available_bytes=int(self.watermarks.soft_mb * MB),
            hard_available_bytes=int(self.watermarks.hard_mb * MB), port=self.config.server.port,
            gateway_ready=bool(gw and gw.child and gw.state == "ready"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
