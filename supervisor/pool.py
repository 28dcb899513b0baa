"""One pool of processes: the workers of one model, or the gateway (circus's
watcher idea).

A :class:`Pool` owns its slots and everything that happens to them one at a time:
it spawns a process per slot, keeps the pool at its ``desired`` size (scaling down
drains the least useful workers first), restarts a process that exited with
backoff (policy.py), parks a crash loop or a model that cannot load, kills a
worker whose heartbeat went stale, drains and stops the workers it no longer
wants (SIGTERM, grace, SIGKILL of the tree, never blocking the loop), and unloads
idle ones. What spans pools, memory admission and eviction above all, is the
fleet's (supervisor/fleet.py); it reaches a pool's decisions through
:class:`PoolEnv`.

Nothing here opens a socket or reads the real clock: processes come from
``PoolEnv.launch`` and time from ``PoolEnv.clock``, so tests drive a pool with
fake process handles and a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import structlog

from turnout.protocol import messages as m
from turnout.protocol.config import ModelConfig, SupervisorConfig
from turnout.protocol.exits import EXIT_MODEL_LOAD_ERROR
from turnout.supervisor import memory, policy

log = structlog.get_logger()

MB = 1024 * 1024
Kind = Literal["gateway", "worker"]


class ProcessHandle(Protocol):
    """A started child as a pool sees it (supervisor/process.py's Child)."""

    @property
    def pid(self) -> int: ...

    @property
    def started_at(self) -> float: ...  # the pool's clock at spawn

    def poll(self) -> int | None: ...  # the exit code (negative: killed by that signal)

    def terminate(self) -> None: ...  # SIGTERM

    def kill(self) -> None: ...  # SIGKILL of the tree

    def tree_rss(self) -> int: ...


# (child id, module to run, its spec as JSON) -> the started child
Launch = Callable[[str, str, bytes], ProcessHandle]


@dataclass
class Slot:
    """A place for one process: the gateway or one worker of a model.

    A slot that is ``retiring`` is being stopped on purpose (scale down, eviction,
    idle unload): it is drained, stopped and then removed, never restarted."""

    id: str
    kind: Kind
    model: ModelConfig | None = None
    child: ProcessHandle | None = None
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
    # Why its process is being killed by the supervisor (hung, requested), and why
    # it last exited (an m.RestartReason), for the restart counts (issue 17).
    kill_cause: m.RestartReason | None = None
    exit_cause: m.RestartReason = "exited"

    @property
    def load(self) -> int:
        """Requests it holds: the larger of the worker's and the gateway's counts."""
        return max(self.in_flight, self.gw_in_flight)


@dataclass
class PoolEnv:
    """What the pools of one fleet share.

    Options:
        settings: the ``[supervisor]`` section (drains, grace, keep-alive).
        backoff: the restart policy.
        launch: starts a child (supervisor/process.py's ``spawn`` in the arbiter).
        clock: monotonic seconds.
        publish: announces a slot's state (a WorkerEvent); the int is a pid to name
            when the slot no longer has a child (0: its child's).
        gone: a retiring slot is gone for good (a victim evicted to make room).
    """

    settings: SupervisorConfig
    backoff: policy.BackoffPolicy
    launch: Launch
    clock: Callable[[], float]
    publish: Callable[[Slot, int], None]
    gone: Callable[[str], None]
    # (model, kind, reason) -> times: restarts, evictions and parks since start
    # (StatusReply.lifecycle; the gateway's /metrics).
    lifecycle: dict[tuple[str, m.LifecycleKind, str], int] = field(default_factory=dict)

    def now_ns(self) -> int:
        return int(self.clock() * 1e9)

    def count(self, model: str, kind: m.LifecycleKind, reason: str) -> None:
        key = (model, kind, reason)
        self.lifecycle[key] = self.lifecycle.get(key, 0) + 1


class Pool:
    """Options:
    name: the model's name (``gateway`` for the gateway's pool).
    kind: ``worker`` or ``gateway`` (the gateway is never parked, drained or
        unloaded; its one slot is added by its owner with a fixed id).
    model: the model's configuration (None for the gateway).
    desired: how many workers it should run.
    spec: the module to run and the JSON spec of a slot's process.
    env: what it shares with the other pools.
    """

    def __init__(self, name: str, kind: Kind, model: ModelConfig | None, desired: int,
                 spec: Callable[[Slot], tuple[str, bytes]], env: PoolEnv) -> None:
        self.name = name
        self.kind: Kind = kind
        self.model = model
        self.desired = desired
        self.reason = ""  # why it has fewer workers than configured (evicted, idle...)
        self.slots: dict[str, Slot] = {}
        self._spec = spec
        self.env = env

    # ----------------------------------------------------------------- slots

    def new_slot(self, slot_id: str | None = None) -> Slot:
        if slot_id is None:
            i = 0
            while f"{self.name}-{i}" in self.slots:
                i += 1
            slot_id = f"{self.name}-{i}"
        slot = Slot(slot_id, self.kind, model=self.model)
        self.slots[slot.id] = slot
        return slot

    def active(self) -> list[Slot]:
        """The slots that count towards ``desired`` (not being stopped)."""
        return [s for s in self.slots.values() if not s.retiring]

    def failed(self) -> list[Slot]:
        return [s for s in self.active() if s.state == "failed"]

    def spawn(self, slot: Slot) -> None:
        slot.restart_at = None
        slot.state = "starting"
        slot.last_hb_ns = 0
        slot.gw_routing = False
        slot.gw_in_flight = 0
        slot.in_flight = 0
        slot.spawned_at = self.env.clock()
        slot.last_used = slot.spawned_at
        module, spec = self._spec(slot)
        slot.child = self.env.launch(slot.id, module, spec)
        log.info("spawned", id=slot.id, pid=slot.child.pid, kind=slot.kind)
        self.env.publish(slot, 0)

    # ----------------------------------------------------------------- scale

    def reconcile(self) -> None:
        """Spawn or retire workers until the pool has ``desired`` of them."""
        have = self.active()
        want = max(0, self.desired)
        if len(have) < want:
            for _ in range(want - len(have)):
                self.spawn(self.new_slot())
        elif len(have) > want:
            views = [policy.SlotView(s.id, s.state, s.load, s.spawned_at) for s in have]
            for sid in policy.scale_down_order(views, len(have) - want):
                self.retire(self.slots[sid], "scaled down", drain=True)

    def unpark(self) -> int:
        """Spawn the parked (failed) workers again; how many there were."""
        failed = self.failed()
        for s in failed:
            log.info("worker_unparked", id=s.id)
            s.crashes = 0
            s.reason = ""
            self.spawn(s)
        return len(failed)

    def restart(self, slot: Slot, reason: str) -> None:
        """``RestartWorker``: kill a running worker (it comes back with backoff), or
        bring a parked one back at once."""
        if slot.child is not None:
            log.warning("worker_restart_requested", id=slot.id, reason=reason)
            slot.reason = reason
            slot.kill_cause = "requested"
            slot.child.kill()
        elif slot.state == "failed":
            slot.crashes = 0
            self.spawn(slot)

    # ----------------------------------------------------------------- stops

    def evict(self, slot: Slot, reason: str, *, cause: m.EvictionReason, drain: bool,
              timeout_s: float | None = None) -> None:
        """Stop one worker and lower the desired count, so it is not respawned: the
        model comes back on demand or with ``turnout load``. ``cause``: ``reason``
        in the metrics' vocabulary."""
        self.desired = max(0, self.desired - 1)
        self.reason = reason
        if not slot.retiring:
            self.env.count(self.name, "eviction", cause)
        self.retire(slot, reason, drain=drain, timeout_s=timeout_s)

    def evict_all(self, reason: str, cause: m.EvictionReason = "requested") -> int:
        slots = self.active()
        self.desired = 0
        self.reason = reason
        for s in slots:
            self.env.count(self.name, "eviction", cause)
            self.retire(s, reason, drain=True)
        return len(slots)

    def retire(self, slot: Slot, reason: str, *, drain: bool, timeout_s: float | None = None) -> None:
        """Stop a worker on purpose. A ready worker is drained first: the gateway is
        told (``draining`` event) and stops routing to it; the pool waits for its
        in-flight requests to end (at most ``timeout_s``) before SIGTERM."""
        if slot.retiring:
            return
        slot.retiring = True
        slot.stop_reason = reason
        slot.reason = reason
        if slot.child is None:  # parked, or waiting for a restart: just forget it
            slot.state = "exited"
            self.env.publish(slot, 0)
            del self.slots[slot.id]
            self.env.gone(slot.id)
            return
        if drain and slot.state == "ready":
            slot.state = "draining"
            slot.drain_started = self.env.clock()
            slot.drain_timeout_s = self.env.settings.drain_timeout_s if timeout_s is None else timeout_s
            log.info("worker_draining", id=slot.id, reason=reason)
            self.env.publish(slot, 0)
        else:
            self._terminate(slot)

    def _terminate(self, slot: Slot) -> None:
        """SIGTERM now, SIGKILL of the tree after the grace (``advance_stops``)."""
        assert slot.child is not None
        slot.state = "stopping"
        slot.kill_at = self.env.clock() + self.env.settings.stop_grace_s
        self.env.publish(slot, 0)
        slot.child.terminate()

    def advance_stops(self, gateway_up: bool) -> None:
        """Stop the drained workers; SIGKILL the ones past their grace."""
        now = self.env.clock()
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
                slot.child.kill()

    # ------------------------------------------------------- exits, restarts

    def reap(self, stopping: bool) -> None:
        """Note every child that exited: a retiring slot is removed, any other one
        is parked or its restart is scheduled with backoff."""
        for slot in list(self.slots.values()):
            child = slot.child
            if child is None:
                continue
            code = child.poll()
            if code is None:
                continue
            ran = self.env.clock() - child.started_at
            slot.child = None
            if stopping:
                continue
            reason = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
            slot.exit_cause = slot.kill_cause or ("exited" if code >= 0 else "killed")
            slot.kill_cause = None
            if slot.retiring:
                # Stopped on purpose: removed, never restarted, not a crash.
                slot.state = "exited"
                slot.reason = slot.stop_reason
                self.env.publish(slot, child.pid)
                del self.slots[slot.id]
                log.info("worker_stopped", id=slot.id, pid=child.pid, reason=slot.stop_reason, exit=reason)
                self.env.gone(slot.id)
                continue
            backoff = self.env.backoff
            slot.crashes = policy.next_crash_count(backoff, slot.crashes, ran)
            park = policy.should_park(backoff, slot.crashes, code, EXIT_MODEL_LOAD_ERROR)
            if slot.kind == "gateway":
                park = ""  # the gateway is always brought back
            if slot.reason.startswith("hung"):
                reason = f"{slot.reason}; {reason}"
            slot.state = "exited"
            slot.reason = reason
            self.env.publish(slot, child.pid)
            if park:
                slot.state = "failed"
                slot.reason = f"{park} ({reason})"
                if slot.kind == "worker":
                    self.env.count(self.name, "park", "load_error" if code == EXIT_MODEL_LOAD_ERROR else "crash_loop")
                log.error("worker_parked", id=slot.id, reason=slot.reason)
                self.env.publish(slot, child.pid)
                continue
            delay = policy.restart_delay(backoff, slot.crashes)
            slot.restart_at = self.env.clock() + delay
            log.warning("child_exited", id=slot.id, pid=child.pid, reason=reason,
                        restart_in_s=round(delay, 3), crashes=slot.crashes)

    def restart_due(self, admitted: Callable[[Slot, float], bool]) -> None:
        """Respawn the slots whose backoff is over and that ``admitted`` lets back
        (a worker comes back through memory admission like any load)."""
        now = self.env.clock()
        for slot in list(self.slots.values()):
            if slot.child is None and slot.restart_at is not None and now >= slot.restart_at:
                if slot.kind == "worker" and not admitted(slot, now):
                    continue
                slot.restarts += 1
                if slot.kind == "worker":
                    self.env.count(self.name, "restart", slot.exit_cause)
                self.spawn(slot)

    def check_heartbeats(self, timeout_s: float) -> None:
        """Kill (SIGKILL of the tree) a serving worker whose heartbeat went stale:
        its compute loop is hung. It is then restarted like any crash."""
        if self.kind != "worker":
            return
        now = self.env.now_ns()
        for slot in self.slots.values():
            if slot.child is None or slot.state not in ("ready", "draining"):
                continue
            if policy.heartbeat_stale(now, slot.last_hb_ns, timeout_s):
                log.error("worker_hung", id=slot.id, pid=slot.child.pid,
                          silent_s=round((now - slot.last_hb_ns) / 1e9, 1))
                slot.reason = "hung: no heartbeat"
                slot.kill_cause = "hung"
                slot.last_hb_ns = now  # once: the kill is under way
                slot.child.kill()

    def idle_unload(self) -> None:
        """Evict the workers nobody has used for their keep-alive."""
        if self.model is None:
            return
        keep = self.model.keep_alive_s
        if keep is None:
            keep = self.env.settings.keep_alive_s
        now = self.env.clock()
        for slot in list(self.slots.values()):
            if slot.retiring or slot.child is None:
                continue
            if policy.idle_expired(now, slot.last_used, keep, slot.load, slot.state):
                log.info("worker_idle_unload", id=slot.id, idle_s=round(now - slot.last_used, 1))
                self.evict(slot, f"unloaded: idle for {keep:g} s", cause="idle", drain=True)

    # ------------------------------------------------------------- snapshots

    def sample_rss(self) -> None:
        for slot in self.slots.values():
            if slot.child is not None:
                slot.rss_bytes = slot.child.tree_rss()

    def snaps(self) -> list[memory.WorkerSnap]:
        """Its running workers, as the memory policy sees them."""
        if self.model is None:
            return []
        return [memory.WorkerSnap(id=s.id, model=self.model.name, priority=self.model.priority,
                                  rss_mb=s.rss_bytes / MB, in_flight=s.load, last_used=s.last_used, state=s.state)
                for s in self.active() if s.child is not None]

    def infos(self) -> list[m.WorkerInfo]:
        """Its workers as ``turnout ps`` shows them."""
        if self.model is None:
            return []
        now = self.env.clock()
        mc = self.model
        return [m.WorkerInfo(
            id=s.id, backend=mc.backend, model=mc.name, pid=s.child.pid if s.child else 0, state=s.state,
            rss_bytes=s.rss_bytes, in_flight=s.load, restarts=s.restarts,
            uptime_s=round(now - s.child.started_at, 3) if s.child else 0.0, reason=s.reason,
            priority=mc.priority, idle_s=round(now - s.last_used, 3) if s.child else 0.0, crashes=s.crashes)
            for s in self.slots.values()]
