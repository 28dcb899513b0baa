"""bench.overhead on two trees of turnout, alternated in one session: does a change
(issue 14's hardening) move the gateway's added TTFT?

Run (under the shared lock; both trees are git worktrees, e.g. of the base commit
and of the branch's head):

    git worktree add /tmp/base-wt 64cd3a2 && git worktree add /tmp/head-wt HEAD
    flock /tmp/turnout-heavy.lock .venv/bin/python -m turnout.bench.ab_overhead --a /tmp/base-wt --b /tmp/head-wt

Two measurements, each process of a tree running that tree's code (its own PYTHONPATH
and working directory):

1. **Interleaved TTFT** (decides the target): both trees' turnouts run at once (the fake
   backend, bench.overhead's config), and one client sends them streaming requests in
   turn, in a random order per pair, so whatever else this shared 2-core machine does
   hits both alike. Added TTFT = TTFT through turnout - the fake generator's own TTFT
   in-process (the same for both). Separate runs of the whole bench disagreed by up to
   20% run to run, more than the effect being measured.
2. **Alternated runs** of ``python -m turnout.bench.overhead`` in each tree (A B, then
   B A on the next round): 200-stream tokens/s, per-token cost and cancel latency.

Writes bench/results/ab-overhead.json and .md (in this tree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


TOPS = ("protocol", "gateway", "supervisor", "workers", "cli", "bench")


def importable(tree: Path) -> tuple[str, str]:
    """(PYTHONPATH, bench module) that run ``tree``'s own code. A tree that installs
    as the turnout namespace is read through a view laid out as installed
    (turnout/gateway -> TREE/gateway), which comes before the editable install on
    sys.path; an older tree has the folders as top-level packages."""
    if 'package-dir' not in (tree / "pyproject.toml").read_text():
        return str(tree), "bench.overhead"
    view = Path(tempfile.mkdtemp(prefix="ab-view-")) / "turnout"
    view.mkdir()
    for d in TOPS:
        (view / d).symlink_to(tree.resolve() / d)
    return str(view.parent), "turnout.bench.overhead"


def launcher(tree: Path) -> dict[str, Any]:
    """TurnoutProcess options that run ``tree``'s code."""
    path, module = importable(tree)
    return {"env": {"PYTHONPATH": path}, "cwd": str(tree),
            "cli": "turnout.cli" if module.startswith("turnout.") else "supervisor.cli"}


async def interleaved(trees: list[Path], n: int) -> list[dict[str, Any]]:
    """Streaming TTFT (ms) of ``n`` requests to each tree's turnout, all running at once."""
    import aiohttp

    from turnout.bench.overhead import CONFIG, Interleaved
    from turnout.bench.stats import summary
    from turnout.supervisor.launch import TurnoutProcess

    procs = [TurnoutProcess(CONFIG, **launcher(t)) for t in trees]
    try:
        for tp in procs:
            tp.start()
        side = Interleaved(procs)
        async with aiohttp.ClientSession() as s:
            await side.warm_up(s)
            await side.run(s, n)
        ttft, inproc = side.ttft_ms, side.inproc_ms
        base = statistics.median(inproc)
        return [{"ttft_ms": summary(x), "added_ttft_ms": summary([v - base for v in x]),
                 "inprocess_ttft_ms_p50": round(base, 4)} for x in ttft]
    finally:
        for tp in procs:
            tp.stop()


def run_once(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    path, module = importable(tree)
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", module, "--requests", str(args.requests),
           "--streams", str(args.streams), "--cancels", str(args.cancels)]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench.overhead failed in {tree}:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout[out.stdout.index("{"):]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", type=Path, required=True, help="the reference tree (the base commit)")
    p.add_argument("--b", type=Path, required=True, help="the tree under test")
    p.add_argument("--interleaved", type=int, default=3000, help="requests to each tree, interleaved, per block")
    p.add_argument("--blocks", type=int, default=5, help="interleaved blocks (fresh turnouts each)")
    p.add_argument("--rounds", type=int, default=2, help="alternated runs of bench.overhead per tree")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--cancels", type=int, default=100)
    args = p.parse_args()
    import asyncio

    blocks = []
    for k in range(args.blocks):  # fresh processes each: where the OS puts them varies
        blocks.append(asyncio.run(interleaved([args.a, args.b], args.interleaved)))
        print(f"interleaved block {k + 1}: added TTFT p50 A {blocks[-1][0]['added_ttft_ms']['p50']} ms, "
              f"B {blocks[-1][1]['added_ttft_ms']['p50']} ms", flush=True)
    # The block whose B ÷ A ratio is the median one stands for the run.
    block_ratios = [b[1]["added_ttft_ms"]["p50"] / b[0]["added_ttft_ms"]["p50"] for b in blocks]
    inter = blocks[sorted(range(len(blocks)), key=lambda i: block_ratios[i])[len(blocks) // 2]]
    runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
            res = run_once(getattr(args, side), args)
            runs[side].append(res)
            o = res["overhead"]["added_ttft_ms"]
            print(f"round {r + 1} {side}: added TTFT p50 {o['p50']} ms, p99 {o['p99']} ms, "
                  f"{res['throughput']['tokens_per_s']} tok/s", flush=True)

    def med(side: str, *path: str) -> float:
        vals = []
        for res in runs[side]:
            v: Any = res
            for k in path:
                v = v[k]
            vals.append(float(v))
        return round(statistics.median(vals), 4)

    table: list[dict[str, Any]] = []

    def row(name: str, a: float, b: float, how: str) -> None:
        table.append({"measure": name, "a": a, "b": b, "b_over_a": round(b / a, 4) if a else None, "how": how})

    for name, key, stat in (("added TTFT p50 (ms)", "added_ttft_ms", "p50"),
                            ("added TTFT p99 (ms)", "added_ttft_ms", "p99"),
                            ("TTFT p50 through turnout (ms)", "ttft_ms", "p50")):
        row(name, inter[0][key][stat], inter[1][key][stat], f"interleaved: the median of {args.blocks} blocks")
    separate = (("added TTFT p50, separate runs (ms)", ("overhead", "added_ttft_ms", "p50")),
                ("per-token cost p50 (µs)", ("overhead", "per_token_us_turnout", "p50")),
                ("200 streams, tokens/s", ("throughput", "tokens_per_s")),
                ("cancel p99 (ms)", ("cancel", "client_close_to_worker_stop_ms", "p99")))
    for name, path in separate if args.rounds else ():
        row(name, med("a", *path), med("b", *path), f"median of {args.rounds} alternated runs")
    ratio = table[0]["b_over_a"]
    out = {
        "command": " ".join(["python -m turnout.bench.ab_overhead", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "a": {"tree": str(args.a), "commit": git_head(args.a)}, "b": {"tree": str(args.b), "commit": git_head(args.b)},
        "rounds": args.rounds, "table": table, "interleaved": blocks,
        "block_ratios": [round(r, 4) for r in block_ratios], "runs": runs,
        "added_ttft_p50_ratio": ratio, "within_3_percent": ratio is not None and ratio <= 1.03,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ab-overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# The gateway's overhead, {out['a']['commit']} (A) vs {out['b']['commit']} (B)", "",
             f"Command: `{out['command']}`  ", f"Date: {out['date']} · machine: {out['machine']}  ",
             f"Interleaved: both turnouts at once, {args.interleaved} streaming requests each in turn, in "
             f"{args.blocks} blocks of fresh processes; B ÷ A per block: "
             f"{', '.join(f'{r:.3f}' for r in block_ratios)} (the median block is shown). "
             f"Separate runs: medians of {args.rounds} runs of `python -m turnout.bench.overhead` per tree "
             "(A B, B A, ...).", "", "| measure | A | B | B ÷ A | how |", "|---|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['a']} | {r['b']} | {r['b_over_a']} | {r['how']} |" for r in table]
    lines += ["", f"Added TTFT p50 (interleaved), B ÷ A = {ratio}: {'within' if out['within_3_percent'] else 'NOT within'} 3%.", ""]
    (RESULTS / "ab-overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
