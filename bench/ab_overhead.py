"""bench.overhead on two trees of turnout, alternated in one session: does a change
(issue 14's hardening) move the gateway's added TTFT?

Run (under the shared lock; both trees are git worktrees, e.g. of the base commit
and of the branch's head):

    git worktree add /tmp/base-wt 64cd3a2 && git worktree add /tmp/head-wt HEAD
    flock /tmp/turnout-heavy.lock .venv/bin/python -m turnout.bench.ab_overhead --a /tmp/base-wt --b /tmp/head-wt

Each round runs ``python -m turnout.bench.overhead`` once in each tree (with that tree's own
PYTHONPATH, so every process of that turnout runs that tree's code), in the order
A B then B A on the next round, so drift on this shared machine hits both alike.
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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--cancels", type=int, default=100)
    args = p.parse_args()
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

    rows = [("added TTFT p50 (ms)", ("overhead", "added_ttft_ms", "p50")),
            ("added TTFT p99 (ms)", ("overhead", "added_ttft_ms", "p99")),
            ("TTFT p50 through turnout (ms)", ("overhead", "ttft_ms_turnout", "p50")),
            ("per-token cost p50 (µs)", ("overhead", "per_token_us_turnout", "p50")),
            ("200 streams, tokens/s", ("throughput", "tokens_per_s")),
            ("cancel p99 (ms)", ("cancel", "client_close_to_worker_stop_ms", "p99"))]
    table: list[dict[str, Any]] = []
    for name, path in rows:
        a, b = med("a", *path), med("b", *path)
        table.append({"measure": name, "a": a, "b": b, "b_over_a": round(b / a, 4) if a else None})
    ratio = table[0]["b_over_a"]
    out = {
        "command": " ".join(["python -m turnout.bench.ab_overhead", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "a": {"tree": str(args.a), "commit": git_head(args.a)}, "b": {"tree": str(args.b), "commit": git_head(args.b)},
        "rounds": args.rounds, "table": table, "runs": runs,
        "added_ttft_p50_ratio": ratio, "within_3_percent": ratio is not None and ratio <= 1.03,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ab-overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# bench.overhead, {out['a']['commit']} (A) vs {out['b']['commit']} (B), alternated", "",
             f"Command: `{out['command']}`  ", f"Date: {out['date']} · machine: {out['machine']}  ",
             f"Medians over {args.rounds} runs of `python -m turnout.bench.overhead` in each tree (A B, B A, ...).", "",
             "| measure | A | B | B ÷ A |", "|---|---|---|---|"]
    lines += [f"| {r['measure']} | {r['a']} | {r['b']} | {r['b_over_a']} |" for r in table]
    lines += ["", f"Added TTFT p50, B ÷ A = {ratio}: {'within' if out['within_3_percent'] else 'NOT within'} 3%.", ""]
    (RESULTS / "ab-overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
