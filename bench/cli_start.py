"""How fast the ``turnout`` command starts: ``turnout --help`` and ``turnout ps``
(against a running turnout with a fake model), beside a bare ``python -c pass``,
interleaved run by run so host noise hits every command alike; with ``--base DIR``
also the same commands from another checkout (e.g. the commit before cli/ existed,
``git archive COMMIT | tar -x -C DIR``), run as ``python -m turnout.supervisor.cli``.

    .venv/bin/python -m turnout.bench.cli_start --runs 15 [--base DIR]

Writes ``bench/results/cli_start.json`` and ``.md`` (medians, seconds) and the
``-X importtime`` top entries (cumulative) of each command of this tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from turnout.supervisor.launch import TurnoutProcess

ROOT = Path(__file__).resolve().parents[1]
FAKE = '[[models]]\nname = "fake"\nbackend = "fake"\n'


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode(errors='replace')[-400:]}")
    return dt


def importtime_top(argv: list[str], env: dict[str, str], n: int = 8) -> list[tuple[str, float]]:
    """The top-level imports of a command by cumulative time (ms), largest first."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True,
                       cwd="/")
    top: list[tuple[str, float]] = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cum, name = line.split("|")
        if name.startswith("  "):
            continue  # only what the command imports itself, not what those import
        top.append((name.strip(), int(cum) / 1000))
    return sorted(top, key=lambda x: -x[1])[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m turnout.bench.cli_start", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--base", help="another checkout to time beside this one (python -m turnout.supervisor.cli)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/cli_start"))
    args = ap.parse_args(argv)

    t = TurnoutProcess(FAKE).start()
    try:
        inst = ["--port", str(t.port), "--runtime-dir", str(t.runtime_dir)]
        env = dict(t.env)
        py = sys.executable
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([py, "-c", "pass"], env),
            "turnout --help": ([py, "-m", "turnout.cli", "--help"], env),
            "turnout ps": ([py, "-m", "turnout.cli", "ps", *inst], env),
        }
        if args.base:
            base_env = dict(env, PYTHONPATH=str(Path(args.base).resolve()))
            # a checkout from before the turnout namespace: the command's old module
            commands["base: turnout --help"] = ([py, "-m", "supervisor.cli", "--help"], base_env)
            commands["base: turnout ps"] = ([py, "-m", "supervisor.cli", "ps", *inst], base_env)
        times: dict[str, list[float]] = {k: [] for k in commands}
        for cmd, e in commands.values():  # one untimed run each: the page cache, .pyc files
            _timed(cmd, e)
        for _ in range(args.runs):
            for name, (cmd, e) in commands.items():
                times[name].append(_timed(cmd, e))
        imports = {" ".join(["python", *cmd[1:]]): importtime_top(cmd[1:], e)
                   for name, (cmd, e) in commands.items() if "pass" not in name}
    finally:
        t.stop()

    doc = {
        "command": "python -m turnout.bench.cli_start " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "runs": args.runs,
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "min_s": {k: round(min(v), 3) for k, v in times.items()},
        "max_s": {k: round(max(v), 3) for k, v in times.items()},
        "importtime_top_ms": {k: [[n, round(ms, 1)] for n, ms in v] for k, v in imports.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# CLI start time ({doc['date']}, {doc['machine']}, {args.runs} runs, interleaved)", "",
             f"`{doc['command']}`", "", "| command | median (s) | min | max |", "|---|---|---|---|"]
    for k in times:
        lines.append(f"| `{k}` | {doc['median_s'][k]:.3f} | {doc['min_s'][k]:.3f} | {doc['max_s'][k]:.3f} |")
    for k, v in imports.items():
        lines += ["", f"`{k.replace('python', 'python -X importtime', 1)}`: top-level imports, cumulative ms: "
                  + ", ".join(f"{n} {ms:.0f}" for n, ms in v)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
