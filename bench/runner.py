"""Workloads, run against every target side by side.

Workloads (sizes in tokens of the target's own tokenizer):

* ``single_2k``: one 2K-token user turn; reports TTFT p50/p95.
* ``multi_20k_tools``: a Claude Code-like conversation (its system prompt and 24
  tools) of 20K tokens, then a follow-up turn on the same prefix; reports decode
  tokens/s p50, the first turn's TTFT and the second turn's TTFT as a fraction of it.
* ``tool_heavy_50k``: the same shape at 50K tokens; TTFT p95. Skipped and marked
  ``context_overflow`` on a target whose window is smaller.
* ``cancel``: a long stream is cancelled after 4 tokens; reports how much longer the
  next request takes to its first token than it does on an idle target (a target
  that keeps generating for a cancelled client shows it here).
* ``concurrency``: 1, 4 and 16 simultaneous streams; aggregate tokens/s and TTFT p50.

Runs are interleaved target by target, so machine noise hits every target alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turnout.bench import prompts
from turnout.bench.stats import summary
from turnout.bench.targets import StreamResult, Target

CONCURRENCY_LEVELS = (1, 4, 16)
OVERFLOW = "context_overflow"


@dataclass
class Calibration:
    words_per_token: float = 0.75
    tool_overhead_tokens: int = 0


@dataclass
class Plan:
    workloads: list[str]
    runs: int = 3
    sizes: dict[str, int] = field(default_factory=lambda: {"single_2k": 2000, "multi_20k_tools": 20000,
                                                           "tool_heavy_50k": 50000})
    max_tokens: int = 64
    concurrency_levels: tuple[int, ...] = CONCURRENCY_LEVELS


def skip_reason(target: Target, needed_tokens: int, max_tokens: int) -> str | None:
    """Why a workload cannot run on a target (its window is too small), or None."""
    if target.context_window and needed_tokens + max_tokens > target.context_window:
        return OVERFLOW
    return None


def is_overflow(res: StreamResult) -> bool:
    return "prompt is too long" in res.error or "context_length_exceeded" in res.error


async def calibrate(target: Target, fallback: Calibration) -> Calibration:
    """Words per token and the cost of Claude Code's system prompt + tools, on the
    target's own tokenizer when it can count; else the fallback."""
    words = 1500
    sample = prompts.single_turn(1, seed=12345)
    sample.messages = [{"role": "user", "content": prompts.filler(words, 12345)}]
    n = await target.count_tokens(sample)
    if not n:
        return fallback
    bare = prompts.BenchRequest("probe", 0, [{"role": "user", "content": "hi"}],
                                system=prompts.claude_code_system(), tools=prompts.claude_code_tools())
    overhead = await target.count_tokens(bare) or 0
    return Calibration(words / n, overhead)


def _ok(results: list[StreamResult]) -> list[StreamResult]:
    return [r for r in results if not r.error and r.ttft_s is not None]


async def run_single(target: Target, plan: Plan, cal: Calibration, run: int) -> StreamResult:
    req = prompts.single_turn(plan.sizes["single_2k"], seed=1000 + run, words_per_token=cal.words_per_token,
                              max_tokens=plan.max_tokens)
    return await target.run(req)


async def run_conversation(target: Target, plan: Plan, cal: Calibration, workload: str, run: int) -> tuple[StreamResult, StreamResult | None]:
    req = prompts.conversation(workload, plan.sizes[workload], seed=2000 + run, words_per_token=cal.words_per_token,
                               tool_overhead_tokens=cal.tool_overhead_tokens, max_tokens=plan.max_tokens)
    first = await target.run(req)
    if first.error:
        return first, None
    second = await target.run(prompts.follow_up(req, first.text, seed=3000 + run))
    return first, second


async def run_cancel(target: Target, plan: Plan, run: int) -> float | None:
    """Extra time-to-first-token (s) of a request sent right after a cancel."""
    short = prompts.single_turn(60, seed=4000 + run, max_tokens=4)
    idle = await target.run(short)
    long = prompts.single_turn(60, seed=5000 + run, max_tokens=2000)
    await target.run(long, cancel_after=4)
    after = await target.run(prompts.single_turn(60, seed=4000 + run, max_tokens=4))
    if idle.ttft_s is None or after.ttft_s is None:
        return None
    return max(0.0, after.ttft_s - idle.ttft_s)


async def run_concurrency(target: Target, plan: Plan, level: int, run: int) -> tuple[float, list[float]]:
    reqs = [prompts.single_turn(200, seed=6000 + run * 100 + i, max_tokens=plan.max_tokens) for i in range(level)]
    t0 = time.perf_counter()
    res = await asyncio.gather(*(target.run(r) for r in reqs))
    wall = time.perf_counter() - t0
    ok = _ok(list(res))
    return sum(r.output_tokens for r in ok) / wall, [r.ttft_s for r in ok if r.ttft_s is not None]


async def run_plan(targets: list[Target], plan: Plan, progress: Callable[[str], None] = lambda _s: None) -> dict[str, Any]:
    """Every workload on every target, runs interleaved across targets."""
    cals: dict[str, Calibration] = {}
    fallback = Calibration()
    for t in targets:
        cals[t.name] = await calibrate(t, fallback)
        if t.name in cals and cals[t.name] is not fallback:
            fallback = cals[t.name]  # a target that cannot count uses the last measured ratio
    out: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    raw: dict[str, dict[str, Any]] = {t.name: {w: [] for w in plan.workloads} for t in targets}

    for w in plan.workloads:
        for run in range(plan.runs):
            for t in targets:
                cal = cals[t.name]
                progress(f"{w} run {run + 1}/{plan.runs} on {t.name}")
                if w in ("single_2k", "multi_20k_tools", "tool_heavy_50k"):
                    why = skip_reason(t, plan.sizes[w], plan.max_tokens)
                    if why:
                        out[t.name][w] = {"skipped": why}
                        continue
                    if w == "single_2k":
                        raw[t.name][w].append((await run_single(t, plan, cal, run),))
                    else:
                        raw[t.name][w].append(await run_conversation(t, plan, cal, w, run))
                elif w == "cancel":
                    raw[t.name][w].append(await run_cancel(t, plan, run))
                elif w == "concurrency":
                    raw[t.name][w].append({lvl: await run_concurrency(t, plan, lvl, run) for lvl in plan.concurrency_levels})

    for t in targets:
        for w in plan.workloads:
            if "skipped" in out[t.name].get(w, {}):
                continue
            out[t.name][w] = summarise(w, raw[t.name][w])
        out[t.name]["calibration"] = {"words_per_token": round(cals[t.name].words_per_token, 4),
                                      "tool_overhead_tokens": cals[t.name].tool_overhead_tokens}
    return out


def summarise(workload: str, runs: list[Any]) -> dict[str, Any]:
    """Statistics of one workload's runs on one target."""
    if workload == "single_2k":
        res = [r[0] for r in runs]
        if any(is_overflow(r) for r in res):
            return {"skipped": OVERFLOW}
        ok = _ok(res)
        return {"ttft_s": summary([r.ttft_s for r in ok if r.ttft_s is not None]),
                "decode_tps": summary([d for r in ok if (d := r.decode_tps)]),
                "input_tokens": max((r.input_tokens + r.cache_read_tokens for r in ok), default=0),
                "errors": [r.error for r in res if r.error][:3]}
    if workload in ("multi_20k_tools", "tool_heavy_50k"):
        firsts = [r[0] for r in runs]
        if any(is_overflow(r) for r in firsts):
            return {"skipped": OVERFLOW}
        seconds = [r[1] for r in runs if r[1] is not None]
        ok1, ok2 = _ok(firsts), _ok(seconds)
        ratios = [b.ttft_s / a.ttft_s for a, b in zip(ok1, ok2, strict=False)
                  if a.ttft_s and b.ttft_s is not None]
        return {"ttft_s": summary([r.ttft_s for r in ok1 if r.ttft_s is not None]),
                "second_turn_ttft_s": summary([r.ttft_s for r in ok2 if r.ttft_s is not None]),
                "second_turn_ttft_fraction": summary(ratios),
                "decode_tps": summary([d for r in ok1 + ok2 if (d := r.decode_tps)]),
                "input_tokens": max((r.input_tokens + r.cache_read_tokens for r in ok1), default=0),
                "errors": [r.error for r in firsts + seconds if r.error][:3]}
    if workload == "cancel":
        return {"extra_ttft_after_cancel_s": summary([x for x in runs if x is not None])}
    if workload == "concurrency":
        levels: dict[str, Any] = {}
        for lvl in sorted({k for r in runs for k in r}):
            tps = [r[lvl][0] for r in runs]
            ttfts = [x for r in runs for x in r[lvl][1]]
            levels[str(lvl)] = {"tokens_per_s": summary(tps), "ttft_s": summary(ttfts)}
        return levels
    raise ValueError(f"unknown workload {workload!r}")
