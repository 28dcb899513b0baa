"""What the Prometheus metrics cost on the hot path (issue 17): the gateway's added
TTFT and 200-stream tokens/s with ``[metrics] enabled = true`` vs ``false``.

Run (under the shared lock):

    flock /tmp/turnout-heavy.lock .venv/bin/python -m turnout.bench.metrics_overhead

Both turnouts (this tree, bench.overhead's fake config, one with metrics off and
one with them on) run at once, so whatever else this shared 2-core machine does
hits both alike (separate runs differ by up to 20% here):

1. **Interleaved TTFT**: one client sends them streaming requests in turn, in a
   random order per pair; added TTFT = TTFT through turnout - the fake generator's
   own TTFT in-process. ``--blocks`` blocks of fresh processes; the block with the
   median on ÷ off ratio stands for the run.
2. **Throughput at once**: 200 concurrent streams of 500 tokens to each turnout at
   the same time, from a client process of its own each (so one client's speed
   limits neither), every stream checked token by token; on ÷ off tokens/s per
   round, the median of ``--rounds``. Both compete for the same cores, so each
   figure is about half a lone turnout's; what counts is the ratio. (Alternating
   whole runs instead gave round ratios from 0.82 to 1.44 on this loaded host.)

Beside the rates, each gateway process's CPU time (user + system, psutil) per
request (block) and per token (round): what the metrics add to the gateway's own
work, a figure the host's noise moves far less than a rate.

Meanwhile /metrics of the "on" turnout is scraped every ``--scrape-every`` seconds
(with the token), as a Prometheus would, so its cost is counted too.

Writes bench/results/metrics-overhead.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from turnout.bench.overhead import CONFIG, Interleaved, bench_throughput
from turnout.bench.stats import summary
from turnout.supervisor.launch import TurnoutProcess

RESULTS = Path(__file__).resolve().parent / "results"
SIDES = ("off", "on")
TARGET = 0.02  # on ÷ off within 2%


def gateway_of(t: TurnoutProcess) -> psutil.Process:
    for p in t.descendants():
        if "turnout.gateway.main" in p.cmdline():
            return p
    raise RuntimeError("no gateway process")


def cpu_s(p: psutil.Process) -> float:
    c = p.cpu_times()
    return c.user + c.system


def configs() -> dict[str, str]:
    return {side: CONFIG + f"\n[metrics]\nenabled = {'true' if side == 'on' else 'false'}\n" for side in SIDES}


async def scraper(t: TurnoutProcess, every_s: float, stop: asyncio.Event, counts: list[int]) -> None:
    if every_s <= 0:
        return
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(t.base_url + "/metrics", headers={"x-api-key": t.token}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"/metrics answered {r.status}")
            counts[0] += 1
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass


async def interleaved(n: int, seed: int, every_s: float) -> dict[str, Any]:
    procs = {side: TurnoutProcess(cfg) for side, cfg in configs().items()}
    try:
        for tp in procs.values():
            tp.start()
        side = Interleaved([procs[k] for k in SIDES], seed)
        stop = asyncio.Event()
        scrapes = [0]
        scraping = asyncio.create_task(scraper(procs["on"], every_s, stop, scrapes))
        async with aiohttp.ClientSession() as s:
            await side.warm_up(s)
            gws = {k: gateway_of(tp) for k, tp in procs.items()}
            cpu0 = {k: cpu_s(p) for k, p in gws.items()}
            await side.run(s, n)
            ttft = dict(zip(SIDES, side.ttft_ms, strict=True))
            inproc = side.inproc_ms
            cpu_us = {k: round((cpu_s(p) - cpu0[k]) / n * 1e6, 1) for k, p in gws.items()}
        stop.set()
        await scraping
        base = statistics.median(inproc)
        return {"scrapes": scrapes[0], "inprocess_ttft_ms_p50": round(base, 4),
                **{k: {"ttft_ms": summary(v), "added_ttft_ms": summary([x - base for x in v]),
                       "gateway_cpu_us_per_request": cpu_us[k]} for k, v in ttft.items()}}
    finally:
        for tp in procs.values():
            tp.stop()


@dataclass
class _Target:
    """What bench_throughput needs of a TurnoutProcess, across a process boundary."""

    base_url: str
    token: str


def _throughput_at(t: _Target, streams: int, tokens: int, start_at: float) -> dict[str, Any]:
    """In a client process of its own: wait for the common start, then the streams."""
    time.sleep(max(0.0, start_at - time.time()))
    return asyncio.run(bench_throughput(t, streams, tokens))  # type: ignore[arg-type]


async def at_once(rounds: int, streams: int, tokens: int, every_s: float) -> list[dict[str, Any]]:
    procs = {side: TurnoutProcess(cfg) for side, cfg in configs().items()}
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    try:
        for tp in procs.values():
            tp.start()
        stop = asyncio.Event()
        scrapes = [0]
        scraping = asyncio.create_task(scraper(procs["on"], every_s, stop, scrapes))
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            gws = {k: gateway_of(tp) for k, tp in procs.items()}
            for r in range(rounds):
                cpu0 = {k: cpu_s(p) for k, p in gws.items()}
                start_at = time.time() + 2.0  # both clients started and warmed by then
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                futs = {side: loop.run_in_executor(pool, _throughput_at, _Target(procs[side].base_url,
                                                                                    procs[side].token),
                                                   streams, tokens, start_at) for side in order}
                res = {side: await f for side, f in futs.items()}
                for side, x in res.items():
                    if x["streams_bad"]:
                        raise RuntimeError(f"{side}: {x['bad_examples']}")
                cpu = {k: (cpu_s(p) - cpu0[k]) / res[k]["tokens_total"] * 1e6 for k, p in gws.items()}
                out.append({**{k: res[k]["tokens_per_s"] for k in SIDES},
                            "cpu_us_per_token": {k: round(v, 3) for k, v in cpu.items()}})
                print(f"round {r + 1}: tokens/s at once off {out[-1]['off']}, on {out[-1]['on']}; gateway CPU "
                      f"µs/token off {cpu['off']:.2f}, on {cpu['on']:.2f}", flush=True)
        stop.set()
        await scraping
        out.append({"scrapes": scrapes[0]})
    finally:
        for tp in procs.values():
            tp.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--interleaved", type=int, default=3000, help="requests to each turnout, interleaved, per block")
    p.add_argument("--blocks", type=int, default=5, help="interleaved blocks (fresh turnouts each)")
    p.add_argument("--rounds", type=int, default=8, help="throughput rounds, both turnouts at once")
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--scrape-every", type=float, default=5.0, help="seconds between scrapes of the 'on' side (0: none)")
    args = p.parse_args()

    blocks = []
    for k in range(args.blocks):
        blocks.append(asyncio.run(interleaved(args.interleaved, k, args.scrape_every)))
        b = blocks[-1]
        print(f"interleaved block {k + 1}: added TTFT p50 off {b['off']['added_ttft_ms']['p50']} ms, "
              f"on {b['on']['added_ttft_ms']['p50']} ms ({b['scrapes']} scrapes)", flush=True)
    ratios = [b["on"]["added_ttft_ms"]["p50"] / b["off"]["added_ttft_ms"]["p50"] for b in blocks]
    mid = blocks[sorted(range(len(blocks)), key=lambda i: ratios[i])[len(blocks) // 2]]
    rounds = asyncio.run(at_once(args.rounds, args.streams, args.tokens, args.scrape_every)) if args.rounds else []
    tps = [r for r in rounds if "on" in r]
    tps_ratios = [r["on"] / r["off"] for r in tps]

    table: list[dict[str, Any]] = []

    def row(name: str, off: float, on: float, how: str) -> None:
        table.append({"measure": name, "off": off, "on": on, "on_over_off": round(on / off, 4) if off else None,
                      "how": how})

    how = f"interleaved, the median of {args.blocks} blocks"
    row("added TTFT p50 (ms)", mid["off"]["added_ttft_ms"]["p50"], mid["on"]["added_ttft_ms"]["p50"], how)
    row("added TTFT p99 (ms)", mid["off"]["added_ttft_ms"]["p99"], mid["on"]["added_ttft_ms"]["p99"], how)
    row("TTFT p50 through turnout (ms)", mid["off"]["ttft_ms"]["p50"], mid["on"]["ttft_ms"]["p50"], how)
    row("gateway CPU per request (µs)", statistics.median(b["off"]["gateway_cpu_us_per_request"] for b in blocks),
        statistics.median(b["on"]["gateway_cpu_us_per_request"] for b in blocks),
        f"median of {args.blocks} blocks (4-token streams, warm-up excluded)")
    if tps:
        row(f"{args.streams} streams each, both at once, tokens/s", round(statistics.median(r["off"] for r in tps)),
            round(statistics.median(r["on"] for r in tps)), f"median of {len(tps)} rounds (ratio: median of rounds' ratios)")
        row("gateway CPU per token (µs)", round(statistics.median(r["cpu_us_per_token"]["off"] for r in tps), 3),
            round(statistics.median(r["cpu_us_per_token"]["on"] for r in tps), 3), f"median of {len(tps)} rounds")
    ttft_ratio = round(statistics.median(ratios), 4)
    tps_ratio = round(statistics.median(tps_ratios), 4) if tps_ratios else None
    met = abs(ttft_ratio - 1) < TARGET and (tps_ratio is None or abs(tps_ratio - 1) < TARGET)
    out = {
        "command": " ".join(["python -m turnout.bench.metrics_overhead", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "table": table, "added_ttft_p50_ratio_per_block": [round(r, 4) for r in ratios],
        "added_ttft_p50_ratio": ttft_ratio, "tokens_per_s_ratio_per_round": [round(r, 4) for r in tps_ratios],
        "tokens_per_s_ratio": tps_ratio, "target": f"within {TARGET:.0%}", "met": met,
        "interleaved": blocks, "rounds": rounds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "metrics-overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# The metrics' cost on the hot path: [metrics] enabled = false (off) vs true (on)", "",
             f"Command: `{out['command']}`  ", f"Date: {out['date']} · machine: {out['machine']}  ",
             f"Both turnouts at once (bench.overhead's fake config); /metrics of 'on' scraped every "
             f"{args.scrape_every:g} s. Interleaved: {args.interleaved} streaming requests to each in turn, "
             f"{args.blocks} blocks of fresh processes, on ÷ off added TTFT p50 per block: "
             f"{', '.join(f'{r:.3f}' for r in ratios)} (the median block is shown). Throughput: "
             f"{args.streams} concurrent streams of {args.tokens} tokens to each at the same time, a client process "
             f"each, on ÷ off per round: "
             f"{', '.join(f'{r:.3f}' for r in tps_ratios)}.", "",
             "| measure | off | on | on ÷ off | how |", "|---|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['off']} | {r['on']} | {r['on_over_off']} | {r['how']} |" for r in table]
    lines += ["", f"Added TTFT p50 on ÷ off (median of blocks) = {ttft_ratio}; tokens/s on ÷ off (median of "
              f"rounds) = {tps_ratio}: {'within' if met else 'NOT within'} {TARGET:.0%}.", ""]
    (RESULTS / "metrics-overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
