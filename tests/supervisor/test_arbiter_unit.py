"""The arbiter's pools and command handlers (supervisor/pool.py, fleet.py,
handlers.py) driven without processes or sockets: fake process handles, a fake
clock and made-up memory figures, so each decision is checked step by step."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from turnout.protocol import messages as m
from turnout.protocol.config import Config, ModelConfig, SupervisorConfig
from turnout.supervisor.fleet import GATEWAY_ID, Fleet
from turnout.supervisor.handlers import Handlers
from turnout.supervisor.policy import BackoffPolicy
from turnout.supervisor.pool import MB, Slot
from turnout.workers.base import EXIT_MODEL_LOAD_ERROR

TOTAL = 24 * 1024 * MB


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@dataclass
class FakeProc:
    """A child that runs until the test says it exits. SIGTERM ends it at once
    (a well-behaved worker) unless ``ignores_term``; SIGKILL always does. A
    worker sends a heartbeat (with ``in_flight``) at every tick unless ``silent``."""

    id: str
    module: str
    spec: bytes
    pid: int
    started_at: float
    code: int | None = None
    rss: int = 0
    ignores_term: bool = False
    silent: bool = False
    in_flight: int = 0
    signals: list[str] = field(default_factory=list)

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.signals.append("TERM")
        if not self.ignores_term and self.code is None:
            self.code = -15

    def kill(self) -> None:
        self.signals.append("KILL")
        if self.code is None:
            self.code = -9

    def tree_rss(self) -> int:
        return self.rss if self.code is None else 0


@dataclass
class Harness:
    fleet: Fleet
    handlers: Handlers
    clock: FakeClock
    procs: list[FakeProc]
    events: list[tuple[str, str, str]]  # (slot id, state, reason) as published
    memory: dict[str, int]

    def launch(self, child_id: str, module: str, spec: bytes) -> FakeProc:
        p = FakeProc(child_id, module, spec, pid=10_000 + len(self.procs), started_at=self.clock())
        self.procs.append(p)
        return p

    def proc(self, slot_id: str) -> FakeProc:
        """The newest process started for a slot."""
        return [p for p in self.procs if p.id == slot_id][-1]

    def slot(self, slot_id: str) -> Slot:
        s = self.fleet.slot(slot_id)
        assert s is not None, slot_id
        return s

    def ready(self, slot_id: str) -> None:
        """The worker says hello and is ready, as a real one does after loading."""
        assert self.handlers.handle(slot_id, m.Hello(role="worker", id=slot_id, pid=self.proc(slot_id).pid)) is None
        assert self.handlers.handle(slot_id, m.Ready(id=slot_id)) is None

    def tick(self, advance_s: float = 0.0) -> None:
        """Time passes (live workers beat all along), then one turn of the loop."""
        self.clock.advance(advance_s)
        for pool in self.fleet.pools.values():
            for s in list(pool.slots.values()):
                p = s.child
                if isinstance(p, FakeProc) and p.code is None and not p.silent and s.state != "starting":
                    self.handlers.handle(s.id, m.Heartbeat(id=s.id, last_step_ns=0, in_flight=p.in_flight))
        self.fleet.tick()

    def crash(self, slot_id: str, times: int, apart_s: float) -> None:
        """The worker exits with code 1, is reaped, and ``apart_s`` later (restarted
        by then, unless parked) the same again, ``times`` times."""
        for _ in range(times):
            self.proc(slot_id).code = 1
            self.tick()
            self.tick(apart_s)

    def states(self, model: str) -> dict[str, str]:
        return {s.id: s.state for s in self.fleet.pools[model].slots.values()}

    def set_available_mb(self, mb: float) -> None:
        self.memory["available"] = int(mb * MB)


def harness(*models: ModelConfig, backoff: BackoffPolicy | None = None, **settings: float) -> Harness:
    clock = FakeClock()
    procs: list[FakeProc] = []
    events: list[tuple[str, str, str]] = []
    mem = {"available": 16 * 1024 * MB}
    sc = SupervisorConfig(**{"soft_available_mb": 2000.0, "hard_available_mb": 1000.0, "hysteresis_mb": 100.0,
                             "cooldown_s": 5.0, "sample_interval_s": 1.0, **settings})  # type: ignore[arg-type]
    config = Config(models=list(models), supervisor=sc)

    def publish(slot: Slot, pid: int) -> None:
        events.append((slot.id, slot.state, slot.reason))

    h = Harness(None, None, clock, procs, events, mem)  # type: ignore[arg-type]
    h.fleet = Fleet(config, Path("/run/turnout-unit"), "unit-bus-token", backoff or BackoffPolicy(jitter=0.0),
                    launch=h.launch, clock=clock, sample_memory=lambda: (mem["available"], TOTAL),
                    publish=publish, publish_memory=lambda ev: events.append(("memory", ev.pressure, "")))
    h.handlers = Handlers(h.fleet)
    h.fleet.start()
    return h


def model(name: str, workers: int = 1, **kw: typing.Any) -> ModelConfig:
    return ModelConfig(name=name, backend="fake", workers=workers, **{"expected_mb": 500.0, **kw})


# ------------------------------------------------------------------ start, scale


def test_start_spawns_the_gateway_then_each_models_workers_with_their_specs() -> None:
    h = harness(model("a", workers=2), model("b"))
    assert [(p.id, p.module) for p in h.procs] == [
        (GATEWAY_ID, "turnout.gateway.main"), ("a-0", "turnout.workers.main"), ("a-1", "turnout.workers.main"), ("b-0", "turnout.workers.main")]
    spec = msgspec.json.decode(h.proc("b-0").spec)
    assert spec["model"] == "b" and spec["gateway_ids"] == [GATEWAY_ID] and spec["bus_secret"] == "unit-bus-token"
    assert msgspec.json.decode(h.proc(GATEWAY_ID).spec)["runtime_dir"] == "/run/turnout-unit"


def test_scale_up_starts_one_worker_per_admission() -> None:
    h = harness(model("a"))
    reply = h.fleet.scale("a", 3)
    assert isinstance(reply, m.Ack) and reply.message == "scaled to a=3"
    assert sorted(h.states("a")) == ["a-0", "a-1", "a-2"]
    assert h.fleet.pools["a"].desired == 3


def test_scale_up_refused_by_admission_keeps_what_runs() -> None:
    h = harness(model("a", expected_mb=6000.0))
    h.set_available_mb(7000)  # 6000 more would leave 1000, under the 2000 soft mark
    h.tick(1.0)
    reply = h.fleet.scale("a", 3)
    assert isinstance(reply, m.ErrorReply)
    assert reply.message.startswith("scaled to a=1; cannot load model 'a' now: not enough memory")
    assert list(h.states("a")) == ["a-0"] and h.fleet.pools["a"].desired == 1


def test_scale_down_stops_the_not_yet_serving_at_once_and_drains_the_ready() -> None:
    h = harness(model("a", workers=3))
    h.handlers.handle(GATEWAY_ID, m.Ready(id=GATEWAY_ID, port=1))
    h.ready("a-0")
    h.ready("a-1")  # a-2 is still loading
    h.proc("a-0").in_flight = 2  # busy: kept
    h.tick()
    reply = h.fleet.scale("a", 1)
    assert isinstance(reply, m.Ack) and reply.message == "scaled to a=1"
    assert h.proc("a-2").signals == ["TERM"]  # not serving yet: nothing to drain
    assert h.slot("a-1").state == "draining" and h.proc("a-1").signals == []
    h.tick(0.01)
    assert h.proc("a-1").signals == []  # the gateway may still be sending it requests
    # The gateway reports it no longer routes to a-1 and holds nothing there.
    h.handlers.handle(GATEWAY_ID, m.GatewayReport(GATEWAY_ID, [m.WorkerLoad("a-1", 0, routing=False)]))
    h.tick(0.01)
    assert h.proc("a-1").signals == ["TERM"]
    h.tick(0.01)  # both exited: reaped and removed, never restarted
    assert h.states("a") == {"a-0": "ready"}
    assert ("a-1", "exited", "scaled down") in h.events


def test_scale_down_waits_for_the_gateway_before_stopping_a_ready_worker() -> None:
    h = harness(model("a", workers=2))
    h.handlers.handle(GATEWAY_ID, m.Ready(id=GATEWAY_ID, port=1))
    h.ready("a-0")
    h.ready("a-1")
    h.fleet.scale("a", 1)
    h.tick(1.0)
    draining = [s for s, st in h.states("a").items() if st == "draining"]
    assert len(draining) == 1
    assert h.proc(draining[0]).signals == []  # the gateway has not acked: still routed to
    h.tick(60.0)  # drain_timeout_s: stopped anyway
    assert h.proc(draining[0]).signals == ["TERM"]


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    h = harness(model("a"), stop_grace_s=5.0)
    h.proc("a-0").ignores_term = True
    h.fleet.evict("a")
    assert h.proc("a-0").signals == ["TERM"]
    h.tick(4.9)
    assert h.proc("a-0").signals == ["TERM"]
    h.tick(0.2)
    assert h.proc("a-0").signals == ["TERM", "KILL"]
    h.tick(0.01)
    assert h.states("a") == {}


def test_scale_names_a_backend_or_says_what_there_is() -> None:
    h = harness(model("a"), model("b"))
    reply = h.fleet.scale("fake", 2)
    assert isinstance(reply, m.Ack) and reply.message == "scaled to a=2, b=2"
    reply = h.fleet.scale("nope", 1)
    assert isinstance(reply, m.ErrorReply) and reply.message == "no model or backend 'nope' (models: a, b)"


# -------------------------------------------------------------- crash, restart


def test_a_crashed_worker_restarts_with_growing_backoff() -> None:
    h = harness(model("a"), backoff=BackoffPolicy(first_s=0.05, base_s=0.5, factor=2.0, jitter=0.0, healthy_s=30.0))
    delays = []
    for _ in range(4):
        h.proc("a-0").code = 1
        h.tick()
        slot = h.slot("a-0")
        assert slot.state == "exited" and slot.reason == "exited with code 1" and slot.child is None
        assert slot.restart_at is not None
        delays.append(round(slot.restart_at - h.clock(), 3))
        h.tick(delays[-1] - 0.001)
        assert h.slot("a-0").child is None  # not before its time
        h.tick(0.001)
        assert h.slot("a-0").child is not None
    assert delays == [0.05, 0.5, 1.0, 2.0]
    assert h.slot("a-0").restarts == 4 and h.slot("a-0").crashes == 4
    assert len([p for p in h.procs if p.id == "a-0"]) == 5


def test_a_worker_that_ran_healthy_long_enough_restarts_at_once_again() -> None:
    h = harness(model("a"), backoff=BackoffPolicy(first_s=0.05, base_s=0.5, jitter=0.0, healthy_s=30.0))
    h.crash("a-0", times=3, apart_s=5.0)
    h.tick(31.0)  # healthy for longer than healthy_s
    h.proc("a-0").code = -9
    h.tick()
    slot = h.slot("a-0")
    assert slot.crashes == 1 and slot.reason == "killed by signal 9"
    assert slot.restart_at == pytest.approx(h.clock() + 0.05)


def test_a_crash_loop_is_parked_and_load_unparks_it() -> None:
    h = harness(model("a"), backoff=BackoffPolicy(first_s=0.0, base_s=0.1, jitter=0.0, park_after=3))
    h.crash("a-0", times=3, apart_s=1.0)
    slot = h.slot("a-0")
    assert slot.state == "failed" and slot.child is None
    assert slot.reason == "crash loop: 3 crashes in a row (exited with code 1)"
    h.tick(60.0)
    assert h.slot("a-0").child is None  # parked: never restarted by itself
    refused = h.fleet.load("a")
    assert isinstance(refused, m.LoadRefused) and "is parked" in refused.message and refused.retry_after_s == 0
    reply = h.fleet.load("a", unpark=True)
    assert isinstance(reply, m.Ack) and reply.message == "restarting 1 parked worker(s) of a"
    assert h.slot("a-0").state == "starting" and h.slot("a-0").crashes == 0


def test_a_model_that_cannot_load_is_parked_at_its_first_exit() -> None:
    h = harness(model("a"))
    h.proc("a-0").code = EXIT_MODEL_LOAD_ERROR
    h.tick()
    assert h.slot("a-0").state == "failed"
    assert h.slot("a-0").reason == f"model failed to load (exited with code {EXIT_MODEL_LOAD_ERROR})"


def test_the_gateway_is_always_brought_back() -> None:
    h = harness(backoff=BackoffPolicy(first_s=0.05, jitter=0.0, park_after=1))
    h.proc(GATEWAY_ID).code = EXIT_MODEL_LOAD_ERROR
    h.tick()
    assert h.slot(GATEWAY_ID).state == "exited"
    h.tick(0.05)
    assert h.slot(GATEWAY_ID).state == "starting" and len(h.procs) == 2


def test_a_silent_worker_is_killed_as_hung_and_restarted() -> None:
    h = harness(model("a"))
    h.ready("a-0")
    h.tick(9.0)
    h.proc("a-0").silent = True
    h.tick(9.0)
    assert h.proc("a-0").signals == []  # heartbeat_timeout_s is 10
    h.tick(1.1)
    assert h.proc("a-0").signals == ["KILL"]
    h.tick()
    assert h.slot("a-0").reason == "hung: no heartbeat; killed by signal 9"
    h.tick(0.05)
    assert h.slot("a-0").state == "starting"


def test_a_crashed_worker_waits_for_memory_before_it_comes_back() -> None:
    h = harness(model("a", expected_mb=4000.0), retry_after_s=10.0)
    h.set_available_mb(1500)  # soft pressure
    h.tick(1.0)
    h.proc("a-0").code = -9  # the OOM killer
    h.tick()
    h.tick(0.05)
    assert h.slot("a-0").child is None
    assert h.slot("a-0").reason.startswith("restart waits for memory: memory pressure (soft)")
    h.set_available_mb(8000)
    h.tick(5.0)
    assert h.slot("a-0").child is None  # retried after retry_after_s, not before
    h.tick(5.0)
    assert h.slot("a-0").state == "starting"


# ---------------------------------------------------------------------- memory


def test_soft_pressure_evicts_idle_workers_lowest_priority_first_one_per_cooldown() -> None:
    h = harness(model("high", priority=2), model("low", priority=0), model("mid", priority=1),
                model("busy", priority=-1))
    for sid in ("high-0", "low-0", "mid-0", "busy-0"):
        h.ready(sid)
    h.proc("busy-0").in_flight = 1  # never evicted when soft
    h.set_available_mb(1500)
    order = []
    for _ in range(6):
        h.tick(5.0)
        for s in h.fleet.slot("high-0"), h.fleet.slot("low-0"), h.fleet.slot("mid-0"):
            if s is not None and s.retiring and s.model is not None and s.model.name not in order:
                order.append(s.model.name)
    assert order == ["low", "mid", "high"]
    assert h.slot("busy-0").state == "ready"
    assert ("memory", "soft", "") in h.events
    status = h.fleet.status()
    assert {mi.name: mi.reason for mi in status.models}["low"] == "evicted: memory pressure (soft), idle"
    assert {mi.name: mi.desired for mi in status.models} == {"high": 0, "low": 0, "mid": 0, "busy": 1}


def test_hard_pressure_drains_the_busy_worker_of_lowest_priority() -> None:
    h = harness(model("a", priority=1), model("b", priority=0), hard_drain_s=3.0)
    h.handlers.handle(GATEWAY_ID, m.Ready(id=GATEWAY_ID, port=1))
    for sid in ("a-0", "b-0"):
        h.ready(sid)
        h.proc(sid).in_flight = 1
    h.set_available_mb(1500)
    h.tick(1.0)
    assert h.states("a") == {"a-0": "ready"} and h.states("b") == {"b-0": "ready"}  # soft: busy ones stay
    h.set_available_mb(800)
    h.tick(5.0)
    b = h.slot("b-0")
    assert b.state == "draining" and b.drain_timeout_s == 3.0
    assert b.reason == "evicted: memory pressure (hard), rss 0 MiB"
    assert h.slot("a-0").state == "ready"


def test_a_load_evicts_idle_workers_of_no_higher_priority_then_loads() -> None:
    h = harness(model("old", priority=0, expected_mb=3000.0), model("new", workers=0, expected_mb=3000.0))
    h.ready("old-0")
    h.slot("old-0").rss_bytes = 3000 * MB
    h.set_available_mb(4000)  # 3000 more would leave 1000, under the 2000 soft mark
    h.tick(1.0)
    h.slot("old-0").rss_bytes = 3000 * MB
    reply = h.fleet.load("new")
    assert isinstance(reply, m.Ack) and reply.message == "loading after evictions"
    assert h.states("new") == {}
    assert h.slot("old-0").reason == "evicted to make room for new"
    assert h.fleet.load("new") == m.Ack("loading after evictions")  # asked again meanwhile
    h.tick(0.01)  # drained (no gateway: the heartbeat says idle), SIGTERM
    h.tick(0.01)  # gone: what waited for it loads
    assert h.states("old") == {} and h.states("new") == {"new-0": "starting"}


def test_an_idle_worker_is_unloaded_after_its_keep_alive() -> None:
    h = harness(model("a", keep_alive_s=30.0))
    h.ready("a-0")
    h.tick(29.0)
    assert h.slot("a-0").state == "ready"
    h.tick(1.0)
    assert h.slot("a-0").state in ("draining", "stopping")
    assert h.fleet.pools["a"].reason == "unloaded: idle for 30 s"


# ------------------------------------------------------------ command handlers


def test_every_message_type_has_exactly_one_handler() -> None:
    h = harness()
    assert set(h.handlers.commands) == set(typing.get_args(m.Command))
    assert set(h.handlers.commands) | set(h.handlers.notices) == set(typing.get_args(m.ToSupervisor))
    assert not set(h.handlers.commands) & set(h.handlers.notices)


_COMMAND_REPLIES = (m.WorkersReply, m.Ack, m.ErrorReply, m.LoadRefused, m.StatusReply)


@pytest.mark.parametrize(("cmd", "reply_type"), [
    (m.ListWorkers(), m.WorkersReply),
    (m.Status(), m.StatusReply),
    (m.ScaleModel("a", 2), m.Ack),
    (m.ScaleModel("a", -1), m.ErrorReply),
    (m.LoadModel("a"), m.Ack),
    (m.LoadModel("nope"), m.ErrorReply),
    (m.EvictModel("a"), m.Ack),
    (m.RestartWorker("a-0"), m.Ack),
    (m.RestartWorker("nope"), m.ErrorReply),
    (m.RestartWorker(GATEWAY_ID), m.ErrorReply),
    (m.Shutdown(), m.Ack),
])
def test_each_command_is_answered_with_its_call_id(cmd: m.Command, reply_type: type) -> None:
    h = harness(model("a"))
    reply = h.handlers.handle("cli-1", msgspec.structs.replace(cmd, call_id=4242))
    assert isinstance(reply, reply_type), reply
    assert isinstance(reply, _COMMAND_REPLIES) and reply.call_id == 4242
    # and on the wire, as the sender decodes it
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(reply), type=m.FromSupervisor)
    assert isinstance(wire, reply_type) and isinstance(wire, _COMMAND_REPLIES) and wire.call_id == 4242


def test_the_table_replies_say_what_happened() -> None:
    h = harness(model("a"))
    workers = h.handlers.handle("cli-1", m.ListWorkers(call_id=1))
    assert isinstance(workers, m.WorkersReply) and [w.id for w in workers.workers] == ["a-0"]
    status = h.handlers.handle("cli-1", m.Status(call_id=2))
    assert isinstance(status, m.StatusReply) and status.gateway_pid == h.proc(GATEWAY_ID).pid
    assert status.soft_available_bytes == 2000 * MB and status.models[0].expected_mb == 500.0
    assert h.handlers.handle("cli-1", m.EvictModel("a", call_id=3)) == m.Ack("evicting 1 worker(s) of a", call_id=3)
    assert not h.fleet.stopping
    assert h.handlers.handle("cli-1", m.Shutdown(call_id=4)) == m.Ack("stopping", call_id=4)
    assert h.fleet.stopping


def test_restart_worker_kills_a_running_one_and_it_comes_back() -> None:
    h = harness(model("a"))
    h.ready("a-0")
    h.handlers.handle(GATEWAY_ID, m.RestartWorker("a-0", reason="did not answer a cancel in time"))
    assert h.proc("a-0").signals == ["KILL"]
    h.tick()
    assert h.slot("a-0").reason == "killed by signal 9"
    h.tick(0.05)
    assert h.slot("a-0").state == "starting" and h.slot("a-0").restarts == 1


def test_hello_of_another_protocol_is_refused_and_changes_nothing() -> None:
    h = harness(model("a"))
    reply = h.handlers.handle("a-0", m.Hello(role="worker", id="a-0", pid=1, protocol_version=99))
    assert isinstance(reply, m.Refused) and reply.message == f"protocol 99 != {m.PROTOCOL_VERSION}"
    assert h.slot("a-0").state == "starting"


def test_hello_then_ready_make_a_worker_ready_and_clear_its_models_reason() -> None:
    h = harness(model("a"))
    h.fleet.pools["a"].reason = "unloaded: idle for 30 s"
    h.handlers.handle("a-0", m.Hello(role="worker", id="a-0", pid=1))
    assert h.slot("a-0").state == "loading"
    h.handlers.handle("a-0", m.Ready(id="a-0"))
    assert h.slot("a-0").state == "ready" and h.fleet.pools["a"].reason == ""
    assert [e[1] for e in h.events if e[0] == "a-0"] == ["starting", "loading", "ready"]


# ------------------------------------------- restarts, evictions, parks counted (issue 17)


def lifecycle(h: Harness) -> dict[tuple[str, str, str], int]:
    return {(c.model, c.kind, c.reason): c.count for c in h.fleet.status().lifecycle}


def test_restarts_are_counted_by_why_the_worker_died() -> None:
    h = harness(model("a"))
    h.ready("a-0")
    h.proc("a-0").code = 1  # a crash
    h.tick()
    assert lifecycle(h) == {}  # counted when it comes back
    h.tick(0.05)
    h.ready("a-0")
    h.proc("a-0").code = -9  # the OOM killer
    h.tick()
    h.tick(1.0)
    h.ready("a-0")
    h.handlers.handle(GATEWAY_ID, m.RestartWorker("a-0", reason="did not answer a cancel in time"))
    h.tick()
    h.tick(2.0)
    h.ready("a-0")
    h.proc("a-0").silent = True
    h.tick(10.5)
    h.tick()
    h.tick(5.0)
    assert h.slot("a-0").restarts == 4
    assert lifecycle(h) == {("a", "restart", "exited"): 1, ("a", "restart", "killed"): 1,
                            ("a", "restart", "requested"): 1, ("a", "restart", "hung"): 1}


def test_parks_are_counted_as_a_load_error_or_a_crash_loop() -> None:
    h = harness(model("a"), model("b"), backoff=BackoffPolicy(first_s=0.0, base_s=0.1, jitter=0.0, park_after=2))
    h.proc("a-0").code = EXIT_MODEL_LOAD_ERROR
    h.crash("b-0", times=2, apart_s=1.0)
    assert lifecycle(h) == {("a", "park", "load_error"): 1, ("b", "park", "crash_loop"): 1,
                            ("b", "restart", "exited"): 1}


def test_evictions_are_counted_by_cause() -> None:
    h = harness(model("idle", keep_alive_s=30.0), model("soft", priority=0), model("asked"))
    for sid in ("idle-0", "soft-0", "asked-0"):
        h.ready(sid)
    h.tick(30.0)  # idle-0's keep-alive (the others have none of their own: [supervisor] 0)
    h.fleet.evict("asked")
    h.set_available_mb(1500)
    h.tick(5.0)
    assert lifecycle(h) == {("idle", "eviction", "idle"): 1, ("asked", "eviction", "requested"): 1,
                            ("soft", "eviction", "memory_soft"): 1}
