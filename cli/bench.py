"""``turnout bench``: TTFT and tokens/s of every endpoint, side by side with peers
(bench/cli.py)."""

from __future__ import annotations

import argparse
import os

from turnout.bench.workloads import WORKLOADS
from turnout.cli.common import Lazy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="TTFT p50/p95 and tokens/s of every endpoint, side by side with peers")
    p.add_argument("--url", default=os.environ.get("TURNOUT_URL", "http://127.0.0.1:8765"), help="turnout to measure")
    p.add_argument("--token", default=os.environ.get("TURNOUT_TOKEN", ""), help="API token (default: the keyring's)")
    p.add_argument("--start", nargs="?", const="", default=None, metavar="CONFIG",
                   help="start a private turnout for the run (default config: the bundled model)")
    p.add_argument("--endpoints", help="comma-separated model names (default: every model turnout serves)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    p.add_argument("--size", action="append", metavar="WORKLOAD=TOKENS", help="override a prompt size")
    p.add_argument("--concurrency", help="comma-separated stream counts (default 1,4,16)")
    p.add_argument("--peer", action="append", metavar="PEER",
                   help="inprocess[=GGUF], llama-server[=GGUF], or NAME=URL#MODEL (any OpenAI-compatible server)")
    p.add_argument("--model-path", help="GGUF for the local peers (default: the bundled model)")
    p.add_argument("--out", help="results directory")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=Lazy("turnout.bench.cli", "cmd_bench"))
