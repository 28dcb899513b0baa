"""The gateway bus (gateway/bus.py): its registry of workers (a worker that left is
forgotten when the supervisor's table no longer holds it, without ever dropping
one that registered after the table was made), and its commands to the
supervisor, each answered by the reply that carries its call_id."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import zmq

from turnout.gateway.bus import Bus
from turnout.gateway.dispatch import WorkerRef
from turnout.protocol import messages as m
from turnout.protocol.config import Config
from turnout.protocol.sockets import Endpoints, ZapHandler, bind, make_socket, serve_bus


def _info(wid: str, pid: int) -> m.WorkerInfo:
    return m.WorkerInfo(id=wid, backend="fake", model="fake", pid=pid, state="ready", rss_bytes=0, in_flight=0,
                        restarts=0, uptime_s=1.0)


def _bus() -> Bus:
    bus = Bus("gw-test", Endpoints("/tmp"), Config())
    bus._worker_changed = asyncio.Event()
    return bus


async def test_a_worker_gone_with_its_process_is_forgotten_at_once() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    bus = _bus()
    bus.workers["w"] = WorkerRef("w", b"w", dead.pid, {"fake"}, 1, ready=True)
    bus.reconcile([], time.monotonic())
    assert "w" not in bus.workers


async def test_a_live_worker_missing_from_two_tables_in_a_row_is_forgotten() -> None:
    alive = subprocess.Popen(["sleep", "30"])
    try:
        bus = _bus()
        bus.workers["w"] = WorkerRef("w", b"w", alive.pid, {"fake"}, 1, ready=True)
        bus.reconcile([], time.monotonic())  # one table without it may be a late one
        assert "w" in bus.workers
        bus.reconcile([_info("w", alive.pid)], time.monotonic())  # there after all
        bus.reconcile([], time.monotonic())
        assert "w" in bus.workers
        bus.reconcile([_info("w", alive.pid + 1)], time.monotonic())  # same id, another process
        assert "w" not in bus.workers
    finally:
        alive.kill()
        alive.wait()


async def test_a_worker_that_registered_after_the_question_is_kept() -> None:
    bus = _bus()
    asked_at = time.monotonic()
    bus.workers["w"] = WorkerRef("w", b"w", 999_999_999, {"fake"}, 1, ready=True)
    bus.reconcile([], asked_at)
    assert "w" in bus.workers


# ------------------------------------------------ commands and replies (call_id)

SECRET = "unit-bus-token"


class _Supervisor:
    """The supervisor's bus ROUTER, real ZeroMQ over ipc behind the bus secret,
    answering only when and how a test says."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))  # ipc paths are short
        self.endpoints = Endpoints(str(self.dir))
        self.ctx = zmq.Context()
        self.zap = ZapHandler(self.ctx, SECRET)
        self.zap.start()
        self.sock = make_socket(self.ctx, zmq.ROUTER)
        serve_bus(self.sock)
        bind(self.sock, self.endpoints.bus)
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(m.ToSupervisor)

    async def command(self, deadline_s: float = 5.0) -> tuple[bytes, m.Command]:
        """The next command the gateway sends (its hello and reports are skipped)."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.sock.poll(0):
                ident, raw = self.sock.recv_multipart()
                msg = self.dec.decode(raw)
                if isinstance(msg, m.Command):
                    return ident, msg
                continue
            await asyncio.sleep(0.005)
        raise AssertionError("no command came")

    def reply(self, ident: bytes, msg: m.FromSupervisor) -> None:
        self.sock.send_multipart([ident, self.enc.encode(msg)])

    def close(self) -> None:
        self.sock.close(0)
        self.zap.stop()
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def sup_and_bus() -> AsyncIterator[tuple[_Supervisor, Bus]]:
    sup = _Supervisor()
    bus = Bus("gw-test", sup.endpoints, Config(), SECRET)
    bus.start()
    try:
        yield sup, bus
    finally:
        bus.close()
        sup.close()


async def test_a_reply_after_its_command_timed_out_does_not_answer_the_next(
        sup_and_bus: tuple[_Supervisor, Bus]) -> None:
    sup, bus = sup_and_bus
    with pytest.raises(TimeoutError):
        await bus.command(m.LoadModel("a"), timeout=0.2)
    ident, first = await sup.command()
    second = asyncio.ensure_future(bus.command(m.LoadModel("a")))
    _, cmd = await sup.command()
    assert cmd.call_id != first.call_id and first.call_id != 0
    sup.reply(ident, m.Ack("to a command sent without waiting"))  # call_id 0: a RestartWorker's, say
    sup.reply(ident, m.Ack("late", call_id=first.call_id))
    sup.reply(ident, m.Ack("loading", call_id=cmd.call_id))
    assert await asyncio.wait_for(second, 5.0) == m.Ack("loading", call_id=cmd.call_id)


async def test_replies_find_their_commands_in_any_order(sup_and_bus: tuple[_Supervisor, Bus]) -> None:
    sup, bus = sup_and_bus
    load = asyncio.ensure_future(bus.command(m.LoadModel("a")))
    status = asyncio.ensure_future(bus.command(m.Status()))
    ident, c1 = await sup.command()
    _, c2 = await sup.command()
    by_type = {type(c1): c1, type(c2): c2}
    sup.reply(ident, m.StatusReply(workers=[], port=7, call_id=by_type[m.Status].call_id))
    sup.reply(ident, m.LoadRefused("short of memory", 3.0, call_id=by_type[m.LoadModel].call_id))
    got_status, got_load = await asyncio.wait_for(asyncio.gather(status, load), 5.0)
    assert isinstance(got_status, m.StatusReply) and got_status.port == 7
    assert isinstance(got_load, m.LoadRefused) and got_load.message == "short of memory"


# ------------------------------------------------ a message the worker cannot read


async def test_a_request_its_worker_cannot_read_ends_at_once_as_a_400_naming_the_field(
        sup_and_bus: tuple[_Supervisor, Bus]) -> None:
    """Structs are not type-checked when built: an adapter that let a dict through as
    a temperature once sent a message the worker dropped, and the request hung until
    its cancel was overdue and the worker was restarted. A real worker process (the
    fake backend) now answers it with Failed(invalid_request), and goes on serving."""
    from turnout.gateway.errors import from_fail
    from turnout.protocol.chat import ChatRequest, Message, TextPart
    from turnout.protocol.config import ModelConfig
    from turnout.protocol.specs import WorkerSpec
    from turnout.supervisor.process import spawn, stop_ladder

    sup, bus = sup_and_bus
    spec = WorkerSpec(id="fake-0", backend="fake", model="fake", runtime_dir=str(sup.dir),
                      gateway_ids=["gw-test"], bus_secret=SECRET)
    child = spawn("fake-0", "turnout.workers.main", msgspec.json.encode(spec), spec_dir=str(sup.dir))
    try:
        deadline = time.monotonic() + 30
        while not bus.ready_workers("fake"):
            assert time.monotonic() < deadline, "the worker never said it was ready"
            await asyncio.sleep(0.05)
        mc = ModelConfig(name="fake", backend="fake")

        async def terminal(req: ChatRequest) -> m.StreamMsg:
            st = await bus.open(mc, req)
            while True:
                for msg in await asyncio.wait_for(st.next_batch(), 10.0):
                    if isinstance(msg, m.Done | m.Failed):
                        return msg

        hi = [Message("user", [TextPart("hi")])]
        bad = ChatRequest(model="fake", max_tokens=5, messages=hi, temperature={"a": {}})  # type: ignore[arg-type]
        failed = await terminal(bad)
        assert isinstance(failed, m.Failed) and failed.kind == "invalid_request", failed
        err = from_fail(failed.kind, failed.message)
        assert err.status == 400 and "temperature" in err.message, err.message
        # the worker goes on: the next request is answered
        done = await terminal(ChatRequest(model="fake", max_tokens=5, messages=hi))
        assert isinstance(done, m.Done), done
    finally:
        stop_ladder([child], grace_s=2.0)
