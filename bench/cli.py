"""``turnout bench``: TTFT and tokens/s of every configured endpoint, side by side
with peers, on this machine.

    turnout bench                                 # the running turnout's endpoints
    turnout bench --start [CONFIG]                # start a private turnout for the run
    turnout bench --peer inprocess --peer llama-server --peer ollama=http://127.0.0.1:11434#qwen3:4b
    turnout bench --endpoints gemma3-270m --workloads single_2k,cancel --runs 5

Writes bench.json, bench.md and PNG plots under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from turnout.bench import report
from turnout.bench.runner import Plan, run_plan
from turnout.bench.targets import (
    ChatTarget,
    CompletionsTarget,
    InProcessLlamaTarget,
    Target,
    TurnoutTarget,
)
from turnout.bench.workloads import WORKLOADS


def _get_json(url: str, token: str) -> Any:
    import json

    req = urllib.request.Request(url, headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def turnout_targets(url: str, token: str, only: list[str] | None) -> list[Target]:
    """One target per model turnout serves (aliases left out)."""
    models = _get_json(url + "/v1/models", token)["data"]
    out: list[Target] = []
    for mdl in models:
        if "→" in mdl.get("display_name", ""):
            continue
        if only and mdl["id"] not in only:
            continue
        out.append(TurnoutTarget(f"turnout:{mdl['id']}", url, token, mdl["id"], int(mdl.get("context_window") or 0)))
    if only:
        missing = set(only) - {t.model for t in out if isinstance(t, TurnoutTarget)}
        if missing:
            raise SystemExit(f"turnout bench: not served by turnout: {', '.join(sorted(missing))}")
    return out


def load_inprocess(path: str | None) -> InProcessLlamaTarget:
    from turnout.workers.base import WorkerSpec
    from turnout.workers.llama_cpp import create
    from turnout.workers.models import ensure_default_model

    model_path = path or str(ensure_default_model())
    backend = create(WorkerSpec(id="bench", backend="llama_cpp", model="inprocess", runtime_dir="", gateway_ids=[],
                                path=model_path))
    backend.load()
    return InProcessLlamaTarget("llama-cpp-python in-process", backend)


class LlamaServer:
    """``python -m llama_cpp.server`` on a model, as its docs and MEASURED.md set it
    up for a fair comparison: the same n_ctx and threads as turnout, and
    ``--logits_all false`` (its default doubles prefill)."""

    def __init__(self, model_path: str, n_ctx: int) -> None:
        from turnout.supervisor.launch import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        threads = str(os.cpu_count() or 1)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--n_ctx", str(n_ctx),
             "--n_threads", threads, "--n_threads_batch", threads, "--logits_all", "false",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.url + "/v1/models", timeout=2).close()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise TimeoutError("llama_cpp.server did not start in 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def amain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        print(f"turnout bench: unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    plan = Plan(workloads=workloads, runs=args.runs, max_tokens=args.max_tokens)
    for item in args.size or []:
        k, _, v = item.partition("=")
        if k not in plan.sizes:
            print(f"turnout bench: --size takes one of {', '.join(plan.sizes)}", file=sys.stderr)
            return 2
        plan.sizes[k] = int(v)
    if args.concurrency:
        plan.concurrency_levels = tuple(int(x) for x in args.concurrency.split(","))
    started = None
    server: LlamaServer | None = None
    url, token = args.url.rstrip("/"), args.token
    if args.start is not None:
        from turnout.supervisor.launch import TurnoutProcess

        cfg = Path(args.start).read_text() if args.start else (
            '[[models]]\nname = "gemma3-270m"\nbackend = "llama_cpp"\naliases = ["claude-*"]\n')
        started = TurnoutProcess(cfg, token=token or "bench-token-0123456789")
        print(f"turnout bench: starting turnout ({started.log_path})", file=sys.stderr)
        started.start(timeout=600)
        url, token = started.base_url, started.token
    if not token:
        from turnout.gateway.auth import load_or_create_token

        token = load_or_create_token()
    targets: list[Target] = []
    try:
        only = [e.strip() for e in args.endpoints.split(",")] if args.endpoints else None
        try:
            targets += turnout_targets(url, token, only)
        except (urllib.error.URLError, OSError) as e:
            print(f"turnout bench: cannot reach turnout at {url} ({e}); start it with `turnout up` or pass --start",
                  file=sys.stderr)
            return 1
        inproc: InProcessLlamaTarget | None = None
        for peer in args.peer or []:
            name, _, rest = peer.partition("=")
            if name == "inprocess":
                inproc = load_inprocess(rest or args.model_path)
                targets.append(inproc)
            elif name == "llama-server":
                if inproc is None:
                    inproc = load_inprocess(rest or args.model_path)  # its template renders the prompts
                from turnout.workers.models import ensure_default_model

                server = LlamaServer(rest or args.model_path or str(ensure_default_model()), inproc.context_window)
                targets.append(CompletionsTarget("llama_cpp.server", server.url, "model", inproc.render,
                                                 context_window=inproc.context_window))
            elif rest:
                base, _, model = rest.partition("#")
                targets.append(ChatTarget(name, base, model or name))
            else:
                print(f"turnout bench: --peer {peer!r}: use inprocess, llama-server or NAME=URL#MODEL", file=sys.stderr)
                return 2
        total = len(workloads) * plan.runs * len(targets)
        with tqdm(total=total, desc="turnout bench", unit="run", file=sys.stderr) as bar:
            def progress(msg: str) -> None:
                bar.set_postfix_str(msg[:60])
                bar.update(1)

            results = await run_plan(targets, plan, progress)
        doc = {
            "command": "turnout bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "runs": plan.runs,
            "sizes": plan.sizes,
            "targets": [{"name": t.name, "kind": t.kind, "context_window": t.context_window} for t in targets],
            "results": results,
        }
        out = Path(args.out or f"turnout-bench-{time.strftime('%Y%m%d-%H%M%S')}")
        for f in report.write(doc, out, with_plots=not args.no_plots):
            print(f)
        print(report.markdown(doc))
    finally:
        async with AsyncExitStack() as stack:
            for t in targets:
                stack.push_async_callback(t.close)
        if server is not None:
            server.stop()
        if started is not None:
            started.stop()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    return asyncio.run(amain(args))
