"""Media jobs in the compute loop (workers/base.py), with real inproc sockets and
no processes: frames out without loss, cancel between steps, bugs cost one job."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import msgspec
import numpy as np
import pytest
import zmq

from turnout.protocol import messages as m
from turnout.workers.base import (
    ComputeLoop,
    GenContext,
    GenItem,
    JobIn,
    Pause,
    WithFrames,
    WorkerSpec,
)


class StepBackend:
    """A job of ``n`` steps, each yielding an output with one binary frame."""

    max_concurrency = 4

    def __init__(self) -> None:
        self.models = ["steps"]
        self.steps_run = 0
        self.after_step: Any = None  # stands in for the I/O thread acting meanwhile

    def run_job(self, request_id: str, job: m.Job, frames: list[zmq.Frame], ctx: GenContext) -> Generator[GenItem, None, None]:
        data = bytes(frames[0].buffer)
        if data == b"numpy":  # a backend bug: a numpy scalar in a message
            yield m.JobOutput(request_id, 0, duration_s=np.float64(1.5))  # type: ignore[arg-type]
        for i in range(int(data)):
            self.steps_run += 1
            if self.after_step is not None:
                self.after_step()
            yield WithFrames(m.JobOutput(request_id, 0, media_type="application/octet-stream"),
                             [np.full(1000, i, dtype=np.uint8)])
            yield Pause(0)
        yield m.Done(request_id, 0, "end_turn")


@pytest.fixture
def loop() -> Generator[tuple[ComputeLoop, zmq.Socket, StepBackend], None, None]:
    ctx = zmq.Context()
    spec = WorkerSpec(id="w", backend="steps", model="steps", runtime_dir="/tmp", gateway_ids=["g"])
    b = StepBackend()
    lp = ComputeLoop(spec, b, ctx)  # type: ignore[arg-type]
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://test-out")
    lp._push = ctx.socket(zmq.PUSH)
    lp._push.connect("inproc://test-out")
    yield lp, pull, b
    lp._push.close(0)
    pull.close(0)
    ctx.term()


def job(rid: str, payload: bytes) -> JobIn:
    return JobIn(m.Job(rid, "g", m.UpscaleParams(), n_frames=1), [zmq.Frame(payload)])


def drain(pull: zmq.Socket) -> list[list[bytes]]:
    """What the loop sent towards the gateway (heartbeats to the supervisor left out)."""
    out = []
    while pull.poll(50):
        frames = pull.recv_multipart()
        if frames[0] != b"s":
            out.append(frames)
    return out


def decode(frames: list[bytes]) -> Any:
    return msgspec.msgpack.decode(frames[2], type=m.StreamMsg)


def test_outputs_carry_their_frames_in_order(loop: tuple[ComputeLoop, zmq.Socket, StepBackend]) -> None:
    lp, pull, _ = loop
    lp._start_job(job("r1", b"3"))
    for _ in range(10):
        lp._step_due()
    msgs = drain(pull)
    assert [f[0] for f in msgs] == [b"f", b"f", b"f", b"g"]
    outs = [decode(f) for f in msgs]
    assert [o.seq for o in outs] == [0, 1, 2, 3] and isinstance(outs[-1], m.Done)
    assert all(o.n_frames == 1 for o in outs[:3])
    assert [f[3] for f in msgs[:3]] == [bytes([i]) * 1000 for i in range(3)]
    assert msgs[0][1] == b"g/r1"


def test_cancel_between_steps(loop: tuple[ComputeLoop, zmq.Socket, StepBackend]) -> None:
    lp, pull, b = loop
    # The Cancel arrives while the first step runs (the I/O thread marks it).
    b.after_step = lambda: lp.abort.add("r2")
    lp._start_job(job("r2", b"100"))
    for _ in range(5):
        lp._step_due()
    msgs = [decode(f) for f in drain(pull)]
    assert b.steps_run == 1
    # The step's output still goes out, then the job ends before the next step.
    assert isinstance(msgs[-1], m.Done) and msgs[-1].stop_reason == "cancelled" and msgs[-1].seq == 1


def test_unencodable_output_fails_the_job_not_the_worker(loop: tuple[ComputeLoop, zmq.Socket, StepBackend]) -> None:
    lp, pull, _ = loop
    lp._start_job(job("bad", b"numpy"))
    lp._step_due()
    [msg] = [decode(f) for f in drain(pull)]
    assert isinstance(msg, m.Failed) and msg.kind == "internal" and msg.seq == 0  # no gap in seq
    lp._start_job(job("next", b"1"))  # the loop goes on
    for _ in range(4):
        lp._step_due()
    assert isinstance(decode(drain(pull)[-1]), m.Done)


def test_a_chat_backend_refuses_jobs(loop: tuple[ComputeLoop, zmq.Socket, StepBackend]) -> None:
    lp, pull, _ = loop
    lp.backend = object()  # type: ignore[assignment]  # no run_job
    lp._start_job(job("r3", b"1"))
    [msg] = [decode(f) for f in drain(pull)]
    assert isinstance(msg, m.Failed) and msg.kind == "invalid_request" and "does not run media jobs" in msg.message
