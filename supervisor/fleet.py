"""The supervisor's processes and what spans them: the gateway's pool and one pool
per model (supervisor/pool.py), memory pressure and admission (memory.py: pure
policy), loads waiting for evictions, and the commands that change the pools
(scale, load, evict, restart) with the status they report.

No sockets and no real clock here: the arbiter (supervisor/arbiter.py) owns those
and hands in ``launch``, ``clock``, ``sample_memory`` and the two ``publish``
callbacks, so tests drive a fleet with fake processes, a fake clock and made-up
memory figures (tests/supervisor/test_arbiter_unit.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from turnout.protocol import messages as m
from turnout.protocol.config import Config, ModelConfig, encode_config
from turnout.protocol.specs import GatewaySpec, WorkerSpec
from turnout.supervisor import memory, policy
from turnout.supervisor.pool import MB, Launch, Pool, PoolEnv, Slot

log = structlog.get_logger()

GATEWAY_ID = "gw0"


class Fleet:
    """Options:
    config: the parsed configuration (``host``/``port`` already applied).
    runtime_dir: the instance's runtime directory (named in every child's spec).
    bus_secret: the instance's bus secret (handed to every child in its spec).
    backoff: the restart policy.
    launch, clock: how children start and what time it is (see PoolEnv).
    sample_memory: (available, total) bytes of memory now.
    publish: announces a slot's state (WorkerEvent).
    publish_memory: announces a new pressure level (MemoryEvent).
    """

    def __init__(self, config: Config, runtime_dir: Path, bus_secret: str, backoff: policy.BackoffPolicy,
                 launch: Launch, clock: Callable[[], float], sample_memory: Callable[[], tuple[int, int]],
                 publish: Callable[[Slot, int], None], publish_memory: Callable[[m.MemoryEvent], None]) -> None:
        self.config = config
        self.runtime_dir = runtime_dir
        self.bus_secret = bus_secret
        self.clock = clock
        self._sample = sample_memory
        self._publish_memory = publish_memory
        self.stopping = False
        self.env = PoolEnv(settings=config.supervisor, backoff=backoff, launch=launch, clock=clock,
                           publish=publish, gone=self._victim_gone)
        self.gateway = Pool("gateway", "gateway", None, 1, self._gateway_spec, self.env)
        self.pools: dict[str, Pool] = {mc.name: Pool(mc.name, "worker", mc, mc.workers, self._worker_spec, self.env)
                                       for mc in config.models}
        # model -> workers being evicted to make room for it; loaded once they are gone
        self.pending_loads: dict[str, set[str]] = {}
        # memory
        sc = config.supervisor
        _, total = sample_memory()
        self.total_bytes = total
        self.available_bytes = total
        self.watermarks = memory.resolve_watermarks(
            total / MB, sc.soft_available_mb, sc.hard_available_mb, sc.hysteresis_mb, sc.cooldown_s, sc.headroom_mb)
        self.level: memory.Level = "none"
        self._last_sample = -1e9
        self._last_eviction = -1e9

    # --------------------------------------------------------------- children

    def _gateway_spec(self, slot: Slot) -> tuple[str, bytes]:
        spec = GatewaySpec(id=slot.id, runtime_dir=str(self.runtime_dir), host=self.config.server.host,
                           port=self.config.server.port, config_json=encode_config(self.config).decode(),
                           bus_secret=self.bus_secret)
        return "turnout.gateway.main", msgspec.json.encode(spec)

    def _worker_spec(self, slot: Slot) -> tuple[str, bytes]:
        assert slot.model is not None
        mc = slot.model
        spec = WorkerSpec(id=slot.id, backend=mc.backend, model=mc.name, runtime_dir=str(self.runtime_dir),
                          gateway_ids=[GATEWAY_ID], options=mc.options, path=mc.path,
                          context_window=mc.context_window, aliases=mc.aliases, bus_secret=self.bus_secret)
        return "turnout.workers.main", msgspec.json.encode(spec)

    def start(self) -> None:
        """The gateway first, then each model's configured workers."""
        self.gateway.spawn(self.gateway.new_slot(GATEWAY_ID))
        for pool in self.pools.values():
            pool.reconcile()

    def all_pools(self) -> list[Pool]:
        return [self.gateway, *self.pools.values()]

    def slot(self, slot_id: str) -> Slot | None:
        for pool in self.all_pools():
            s = pool.slots.get(slot_id)
            if s is not None:
                return s
        return None

    def pool_of(self, slot: Slot) -> Pool:
        return self.pools[slot.model.name] if slot.model is not None else self.gateway

    def gateway_slot(self) -> Slot | None:
        return self.gateway.slots.get(GATEWAY_ID)

    def gateway_up(self) -> bool:
        gw = self.gateway_slot()
        return gw is not None and gw.child is not None and gw.state == "ready"

    def tick(self) -> None:
        """One turn of the loop's housekeeping, in this order."""
        self.reap()
        for pool in self.pools.values():
            pool.check_heartbeats(self.config.server.heartbeat_timeout_s)
        if not self.stopping:
            for pool in self.all_pools():
                pool.restart_due(self._restart_admitted)
        gateway_up = self.gateway_up()
        for pool in self.all_pools():
            pool.advance_stops(gateway_up)
        self.sample_memory()
        for pool in self.pools.values():
            pool.idle_unload()

    def reap(self) -> None:
        for pool in self.all_pools():
            pool.reap(self.stopping)

    def _victim_gone(self, slot_id: str) -> None:
        """A worker evicted to make room has gone: load what was waiting for it."""
        for model, victims in list(self.pending_loads.items()):
            victims.discard(slot_id)
            if not victims:
                del self.pending_loads[model]
                if not self.stopping:
                    pool = self.pools[model]
                    pool.desired = max(1, pool.desired)
                    pool.reconcile()

    # ----------------------------------------------------------------- memory

    def snaps(self) -> list[memory.WorkerSnap]:
        return [s for pool in self.pools.values() for s in pool.snaps()]

    def sample_memory(self) -> None:
        """Every ``sample_interval_s``: RSS of every child, available memory, the
        pressure level, and at most one eviction the memory policy plans."""
        now = self.clock()
        if now - self._last_sample < self.config.supervisor.sample_interval_s:
            return
        self._last_sample = now
        for pool in self.all_pools():
            pool.sample_rss()
        self.available_bytes, self.total_bytes = self._sample()
        avail_mb = self.available_bytes / MB
        level = memory.next_level(self.level, avail_mb, self.watermarks)
        if level != self.level:
            log.warning("memory_pressure", pressure=level, previous=self.level, available_mb=round(avail_mb),
                        soft_mb=round(self.watermarks.soft_mb), hard_mb=round(self.watermarks.hard_mb))
            self.level = level
            self._publish_memory(m.MemoryEvent(level, self.available_bytes))
        plan = memory.plan_eviction(self.level, self.snaps(), now, self._last_eviction, self.watermarks)
        if plan is None:
            return
        slot = self.slot(plan.worker_id)
        assert slot is not None and slot.model is not None
        self._last_eviction = now
        log.warning("memory_evict", id=slot.id, model=slot.model.name, pressure=self.level, drain=plan.drain,
                    available_mb=round(avail_mb), rss_mb=round(slot.rss_bytes / MB))
        self.pool_of(slot).evict(slot, plan.reason, cause="memory_hard" if self.level == "hard" else "memory_soft",
                                 drain=True,
                                 timeout_s=self.config.supervisor.hard_drain_s if plan.drain else None)

    def expected_mb(self, mc: ModelConfig) -> float:
        if mc.expected_mb > 0:
            return mc.expected_mb
        if mc.backend == "llama_cpp":
            # "" is the bundled model, a name a registered one: their files, if there yet.
            from turnout.protocol.modelfiles import locate  # late: the supervisor seldom needs it

            path = locate(mc.path)
            return memory.gguf_footprint_mb(str(path), mc.context_window) if path is not None else 0.0
        return 0.0

    def _evict_victims(self, victims: tuple[str, ...], reason: str) -> None:
        for vid in victims:
            slot = self.slot(vid)
            assert slot is not None
            self.pool_of(slot).evict(slot, reason, cause="make_room", drain=True)

    def admit(self, mc: ModelConfig) -> m.CommandReply | None:
        """Admission for one more worker of ``mc``: None when it may start now, else
        the reply to send (a refusal, or an Ack when it waits for evictions)."""
        avail_mb = self.available_bytes / MB
        adm = memory.admit(self.expected_mb(mc), mc.priority, avail_mb, self.level, self.snaps(), self.watermarks)
        if adm.decision == "admit":
            return None
        if adm.decision == "refuse":
            log.warning("load_refused", model=mc.name, reason=adm.reason)
            return m.LoadRefused(f"cannot load model {mc.name!r} now: {adm.reason}",
                                 retry_after_s=self.config.supervisor.retry_after_s)
        log.info("load_evicts", model=mc.name, victims=list(adm.evict), reason=adm.reason)
        self.pending_loads[mc.name] = set(adm.evict)
        self._evict_victims(adm.evict, f"evicted to make room for {mc.name}")
        return m.Ack("loading after evictions")

    def _restart_admitted(self, slot: Slot, now: float) -> bool:
        """A crashed worker comes back through admission like any load: a crash
        under memory pressure (an OOM kill, say) is not restarted into the same
        shortage. Refused: tried again after ``retry_after_s``; evictions: once
        the idle victims are gone."""
        assert slot.model is not None
        mc = slot.model
        avail_mb = self.available_bytes / MB
        others = [w for w in self.snaps() if w.id != slot.id]
        adm = memory.admit(self.expected_mb(mc), mc.priority, avail_mb, self.level, others, self.watermarks)
        if adm.decision == "admit":
            return True
        if adm.decision == "evict":
            log.info("restart_evicts", id=slot.id, victims=list(adm.evict), reason=adm.reason)
            self._evict_victims(adm.evict, f"evicted to make room for {mc.name} (restart)")
            slot.restart_at = now + self.config.supervisor.cooldown_s
            return False
        reason = f"restart waits for memory: {adm.reason}"
        if slot.reason != reason:
            log.warning("restart_deferred", id=slot.id, reason=adm.reason)
            slot.reason = reason
            self.env.publish(slot, 0)
        slot.restart_at = now + self.config.supervisor.retry_after_s
        return False

    # --------------------------------------------------------------- commands

    def find_model(self, name: str) -> ModelConfig | None:
        if name in self.pools:
            return self.pools[name].model
        return self.config.resolve_model(name)

    def scale(self, target: str, n: int) -> m.CommandReply:
        """``turnout scale``: a model's name (or alias), or a backend (every model of
        it). Scaling up passes admission worker by worker."""
        if n < 0:
            return m.ErrorReply("the number of workers must be >= 0")
        mc = self.find_model(target)
        pools = ([self.pools[mc.name]] if mc is not None
                 else [p for p in self.pools.values() if p.model is not None and p.model.backend == target])
        if not pools:
            names = ", ".join(sorted(self.pools)) or "none"
            return m.ErrorReply(f"no model or backend {target!r} (models: {names})")
        refused: list[str] = []
        deferred: list[str] = []
        for pool in pools:
            assert pool.model is not None
            have = len(pool.active())
            pool.desired = min(n, have)  # scaling down happens here
            pool.reconcile()
            for _ in range(n - have):  # scaling up: one admission per worker
                reply = self.admit(pool.model)
                if isinstance(reply, m.LoadRefused):
                    refused.append(reply.message)
                    break
                if reply is not None:  # evicting idle workers first; one more after
                    deferred.append(f"{pool.name}: one more worker once evictions finish")
                    break
                pool.desired += 1
                pool.reconcile()
            log.info("scaled", model=pool.name, workers=pool.desired, requested=n)
        got = "scaled to " + ", ".join(f"{p.name}={p.desired}" for p in pools)
        if refused:
            return m.ErrorReply("; ".join([got, *refused, *deferred]))
        return m.Ack("; ".join([got, *deferred]))

    def load(self, name: str, *, unpark: bool = False) -> m.CommandReply:
        """Make sure ``name`` has a worker: load on demand (gateway) and ``turnout
        load`` (which also un-parks a failed model)."""
        mc = self.find_model(name)
        if mc is None:
            return m.ErrorReply(f"no model {name!r} in the configuration")
        pool = self.pools[mc.name]
        failed = pool.failed()
        if failed and unpark:
            return m.Ack(f"restarting {pool.unpark()} parked worker(s) of {mc.name}")
        if any(s.state != "failed" for s in pool.active()):
            return m.Ack("running")
        if failed:
            return m.LoadRefused(f"model {mc.name!r} is parked: {failed[0].reason}; "
                                 f"`turnout load {mc.name}` tries it again")
        if mc.name in self.pending_loads:
            return m.Ack("loading after evictions")
        refused = self.admit(mc)
        if refused is not None:
            return refused
        pool.desired = max(1, pool.desired)
        pool.reason = ""
        log.info("model_load", model=mc.name)
        pool.reconcile()
        return m.Ack("loading")

    def evict(self, name: str) -> m.CommandReply:
        mc = self.find_model(name)
        if mc is None:
            return m.ErrorReply(f"no model {name!r} in the configuration")
        self.pending_loads.pop(mc.name, None)
        n = self.pools[mc.name].evict_all("evicted by request")
        return m.Ack(f"evicting {n} worker(s) of {mc.name}")

    def restart_worker(self, worker_id: str, reason: str) -> m.CommandReply:
        slot = self.slot(worker_id)
        if slot is None or slot.kind != "worker":
            return m.ErrorReply(f"no worker {worker_id!r}")
        self.pool_of(slot).restart(slot, reason)
        return m.Ack()

    def worker_infos(self) -> list[m.WorkerInfo]:
        return [w for pool in self.pools.values() for w in pool.infos()]

    def status(self) -> m.StatusReply:
        gw = self.gateway_slot()
        models = [m.ModelInfo(name=mc.name, backend=mc.backend, desired=pool.desired, running=len(pool.active()),
                              priority=mc.priority, expected_mb=round(self.expected_mb(mc), 1), reason=pool.reason)
                  for pool in self.pools.values() if (mc := pool.model) is not None]
        return m.StatusReply(
            workers=self.worker_infos(), models=models, supervisor_pid=os.getpid(),
            gateway_pid=gw.child.pid if gw and gw.child else 0, gateway_restarts=gw.restarts if gw else 0,
            available_bytes=self.available_bytes, total_bytes=self.total_bytes, pressure=self.level,
            soft_available_bytes=int(self.watermarks.soft_mb * MB),
            hard_available_bytes=int(self.watermarks.hard_mb * MB), port=self.config.server.port,
            gateway_ready=bool(gw and gw.child and gw.state == "ready"),
            lifecycle=[m.LifecycleCount(model, kind, reason, n)
                       for (model, kind, reason), n in sorted(self.env.lifecycle.items())])
