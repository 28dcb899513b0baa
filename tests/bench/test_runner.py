"""The runner's decisions: context-overflow skips and how runs are summarised."""

from __future__ import annotations

import asyncio

from turnout.bench import runner
from turnout.bench.prompts import BenchRequest
from turnout.bench.targets import StreamResult, Target


class Recorder(Target):
    """A target that answers instantly and records what it was asked."""

    kind = "test"

    def __init__(self, name: str, window: int) -> None:
        super().__init__(name, window)
        self.asked: list[int] = []

    async def run(self, req: BenchRequest, cancel_after: int | None = None) -> StreamResult:
        self.asked.append(req.target_tokens)
        return StreamResult(0.01, 0.11, 11, text="x")


def test_skip_reason() -> None:
    small, big, unknown = Target("s", 32768), Target("b", 1_000_000), Target("u", 0)
    assert runner.skip_reason(small, 50000, 64) == runner.OVERFLOW
    assert runner.skip_reason(small, 20000, 64) is None
    assert runner.skip_reason(big, 50000, 64) is None
    assert runner.skip_reason(unknown, 50000, 64) is None  # unknown window: try, and read the error


def test_overflowing_workload_is_skipped_and_never_sent() -> None:
    small, big = Recorder("small", 32768), Recorder("big", 200_000)
    plan = runner.Plan(workloads=["single_2k", "tool_heavy_50k"], runs=2)
    out = asyncio.run(runner.run_plan([small, big], plan))
    assert out["small"]["tool_heavy_50k"] == {"skipped": "context_overflow"}
    assert 50000 not in small.asked
    assert big.asked.count(50000) == 4  # two runs, each a first turn and a follow-up
    assert out["big"]["tool_heavy_50k"]["ttft_s"]["n"] == 2
    assert out["small"]["single_2k"]["decode_tps"]["p50"] == 100.0  # 10 tokens in 0.1 s after the first


def test_error_saying_prompt_too_long_is_an_overflow() -> None:
    res = StreamResult(None, 0.1, 0, error='{"type":"error","error":{"message":"prompt is too long: 9 tokens > 3 maximum"}}')
    assert runner.summarise("tool_heavy_50k", [(res, None)]) == {"skipped": "context_overflow"}


def test_concurrency_summary() -> None:
    runs = [{1: (10.0, [0.1]), 4: (30.0, [0.1, 0.2, 0.3, 0.4])}, {1: (12.0, [0.2]), 4: (34.0, [0.1, 0.1, 0.1, 0.1])}]
    s = runner.summarise("concurrency", runs)
    assert s["1"]["tokens_per_s"]["p50"] == 10.0 and s["4"]["ttft_s"]["n"] == 8
