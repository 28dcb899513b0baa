"""Cloud proxy overhead and upstream abort time (issue 5).

Run:  .venv/bin/python -m turnout.bench.cloud [--n 300] [--no-litellm] [--litellm PATH]
LiteLLM is found in .venv/bin, then .tools/litellm/bin (its own virtualenv:
``python3 -m venv .tools/litellm && .tools/litellm/bin/pip install 'litellm[proxy]'``,
which keeps its pins out of turnout's), then on PATH.
Writes bench/results/cloud.json and bench/results/cloud.md.

One fast local OpenAI-shaped upstream (tests/upstreams/fake.py in its own
process, answering at once: 20 streamed words) is called, request by request
interleaved so noise hits all alike:

* directly (OpenAI Chat Completions, streamed);
* through turnout: Anthropic Messages in -> OpenAI Chat Completions out;
* through LiteLLM's proxy (``litellm[proxy]``) doing the same translation
  (``/v1/messages`` for an ``openai/`` model, with
  ``LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES=true`` so it calls the
  same ``/chat/completions``).

Added latency = a proxy's time to the answer's end marker minus the direct call's,
at p50 and p99 (and the same for time to first token). Every client reads each
body to its end, as the SDKs do, so its connection is reused. Abort time: the client
closes its connection after 3 text deltas of a slow answer; the upstream stamps
CLOCK_MONOTONIC when it sees its own request end; abort = that - the close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from turnout.bench.stats import pct
from turnout.supervisor.launch import TurnoutProcess, free_port

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "sk-test-SECRET-openai-9z8y7x6w"  # what the fake upstream expects
PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"

CONFIG = """
[[endpoints]]
name = "up"
provider = "openai_compatible"
base_url = "{url}/openai/v1"
key = "up"
[[endpoints.models]]
name = "bench"

[routing]
default = "up/bench"
"""


def _wait_port(port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


async def _read_stream(resp: aiohttp.ClientResponse, t0: float, end: bytes) -> tuple[float, float]:
    """(time to first text, time to the answer's end marker). The body is then
    read to its end, untimed, as SDK clients do, so the connection is reused."""
    ttft = total = 0.0
    buf = b""
    async for chunk in resp.content.iter_any():
        if not ttft and (b"text_delta" in chunk or b'"content":"' in chunk.replace(b'"content":""', b"")):
            ttft = time.perf_counter() - t0
        if not total:
            buf = (buf + chunk)[-200:]
            if end in buf:
                total = time.perf_counter() - t0
    return ttft, total


async def direct(s: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    body = {"model": "bench", "stream": True, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}
    t0 = time.perf_counter()
    async with s.post(f"{url}/openai/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200, await r.text()
        return await _read_stream(r, t0, b"[DONE]")


async def anthropic_in(s: aiohttp.ClientSession, base: str, token: str, model: str, text: str = PROMPT) -> tuple[float, float]:
    body = {"model": model, "stream": True, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    t0 = time.perf_counter()
    async with s.post(f"{base}/v1/messages", json=body,
                      headers={"x-api-key": token, "Authorization": f"Bearer {token}", "anthropic-version": "2023-06-01"}) as r:
        assert r.status == 200, await r.text()
        return await _read_stream(r, t0, b"message_stop")


async def abort_once(s: aiohttp.ClientSession, base: str, token: str, model: str, up: str) -> float | None:
    body = {"model": model, "stream": True, "max_tokens": 500, "messages": [{"role": "user", "content": "[[slow]]"}]}
    async with s.get(f"{up}/_disconnects") as r:
        before = len(await r.json())
    resp = await s.post(f"{base}/v1/messages", json=body,
                        headers={"x-api-key": token, "Authorization": f"Bearer {token}", "anthropic-version": "2023-06-01"})
    n = 0
    async for chunk in resp.content.iter_any():
        n += chunk.count(b"text_delta")
        if n >= 3:
            break
    t_close = time.monotonic_ns()
    resp.close()  # drops the connection, as a client that goes away does
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        async with s.get(f"{up}/_disconnects") as r:
            d = await r.json()
        if len(d) > before:
            return (d[-1][1] - t_close) / 1e6
        await asyncio.sleep(0.002)
    return None


def find_litellm() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    for p in (Path(sys.executable).parent / "litellm", here / ".tools/litellm/bin/litellm"):
        if p.exists():
            return p
    w = shutil.which("litellm")
    return Path(w) if w else None


def start_litellm(exe: Path, up_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: {up_url}/openai/v1
      api_key: {KEY}
""")
    env = {**os.environ, "LITELLM_MASTER_KEY": "sk-litellm-master", "LITELLM_TELEMETRY_DISABLED": "true",
           "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "true", "LITELLM_LOG": "ERROR"}
    log = open(workdir / "litellm.log", "wb")
    proc = subprocess.Popen([str(exe), "--config", str(cfg), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    _wait_port(port, 180)
    return proc, port


def summarize(xs: list[float]) -> dict[str, float]:
    return {"p50": round(pct(xs, 50) * 1000, 3), "p99": round(pct(xs, 99) * 1000, 3), "n": len(xs)}


async def run(n: int, litellm: Path | None, aborts: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    up_port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "tests.upstreams.fake", "--port", str(up_port)],
                          stdout=subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[1]))
    up_url = f"http://127.0.0.1:{up_port}"
    _wait_port(up_port)
    t = TurnoutProcess(CONFIG.format(url=up_url), workdir=str(work), env={"TURNOUT_KEY_UP": KEY})
    lite: subprocess.Popen[bytes] | None = None
    try:
        t.start()
        targets: dict[str, Any] = {"direct": None, "turnout": (t.base_url, t.token, "claude-sonnet-4-6")}
        if litellm is not None:
            lite, lport = start_litellm(litellm, up_url, work)
            targets["litellm"] = (f"http://127.0.0.1:{lport}", "sk-litellm-master", "bench")
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in targets}
        async with aiohttp.ClientSession() as s:
            async def one(name: str) -> tuple[float, float]:
                if name == "direct":
                    return await direct(s, up_url)
                base, tok, model = targets[name]
                return await anthropic_in(s, base, tok, model)

            for name in targets:  # warm-up: connections, caches, LiteLLM's lazy imports
                for _ in range(20):
                    await one(name)
            for _ in range(n):
                for name in targets:
                    times[name].append(await one(name))
            abort: dict[str, list[float]] = {}
            for name in targets:
                if name == "direct":
                    continue
                base, tok, model = targets[name]
                vals = [await abort_once(s, base, tok, model, up_url) for _ in range(aborts)]
                abort[name] = [v for v in vals if v is not None]
                abort[name + "_missed"] = [float(sum(v is None for v in vals))]
        d_total = [x[1] for x in times["direct"]]
        d_ttft = [x[0] for x in times["direct"]]
        out: dict[str, Any] = {"direct": {"total_ms": summarize(d_total), "ttft_ms": summarize(d_ttft)}}
        for name in targets:
            if name == "direct":
                continue
            tot = [x[1] for x in times[name]]
            tt = [x[0] for x in times[name]]
            out[name] = {
                "total_ms": summarize(tot), "ttft_ms": summarize(tt),
                "added_total_ms": {"p50": round((pct(tot, 50) - pct(d_total, 50)) * 1000, 3),
                                   "p99": round((pct(tot, 99) - pct(d_total, 99)) * 1000, 3)},
                "added_ttft_ms": {"p50": round((pct(tt, 50) - pct(d_ttft, 50)) * 1000, 3),
                                  "p99": round((pct(tt, 99) - pct(d_ttft, 99)) * 1000, 3)},
                "abort_ms": summarize([a / 1000 for a in abort[name]]) if abort[name] else None,
                "abort_missed": int(abort[name + "_missed"][0]),
            }
        return out
    finally:
        t.stop()
        if lite is not None:
            lite.terminate()
            try:
                lite.wait(10)
            except subprocess.TimeoutExpired:
                lite.kill()
        up.terminate()
        up.wait(10)


def write(res: dict[str, Any], cmd: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cloud.json").write_text(json.dumps(res, indent=2) + "\n")
    r = res["results"]
    lines = ["# Cloud proxy overhead (issue 5)\n", f"Command: `{cmd}`  ",
             f"Date: {res['date']}  ", f"Machine: {res['machine']}\n",
             "Fast local OpenAI-shaped upstream (20 streamed words, no delay); Anthropic Messages in, "
             "OpenAI Chat Completions out; requests interleaved; each body read to its end (connections reused); "
             f"n = {r['direct']['total_ms']['n']} per target.\n",
             "| target | total p50 ms | total p99 ms | added p50 ms | added p99 ms | added TTFT p50 ms | abort p50 ms | abort p99 ms |",
             "|---|---|---|---|---|---|---|---|",
             f"| direct | {r['direct']['total_ms']['p50']} | {r['direct']['total_ms']['p99']} | - | - | - | - | - |"]
    for name in ("turnout", "litellm"):
        if name in r:
            x = r[name]
            ab = x["abort_ms"] or {"p50": "-", "p99": "-"}
            lines.append(f"| {name} | {x['total_ms']['p50']} | {x['total_ms']['p99']} | {x['added_total_ms']['p50']} | "
                         f"{x['added_total_ms']['p99']} | {x['added_ttft_ms']['p50']} | {ab['p50']} | {ab['p99']} |")
    lines.append("\nTargets: turnout added p50 < 1 ms and below LiteLLM at p50 and p99; abort p99 < 20 ms.")
    lines.append("Abort = upstream sees its request end (CLOCK_MONOTONIC) - the client closed its connection.")
    (RESULTS / "cloud.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--aborts", type=int, default=30)
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--litellm", type=Path, help="the litellm executable (default: found as the module docstring says)")
    args = ap.parse_args()
    litellm = None if args.no_litellm else (args.litellm or find_litellm())
    if not args.no_litellm and (litellm is None or not litellm.exists()):
        print("LiteLLM is not installed: python3 -m venv .tools/litellm && .tools/litellm/bin/pip install 'litellm[proxy]'"
              " (or pass --no-litellm)", file=sys.stderr)
        sys.exit(2)
    res = asyncio.run(run(args.n, litellm, args.aborts))
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
           "command": " ".join(["python -m turnout.bench.cloud", *sys.argv[1:]]), "results": res}
    write(out, " ".join([".venv/bin/python -m turnout.bench.cloud", *sys.argv[1:]]))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
