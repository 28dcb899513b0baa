"""Gateway + bus overhead, stream throughput and cancellation latency (issue 2).

Run:  .venv/bin/python -m turnout.bench.overhead [--quick]
Writes bench/results/overhead.json and bench/results/overhead.md.

Everything is measured side by side in one run on this machine:

* overhead: time to first token (TTFT) and per-token cost of a streaming
  ``/v1/messages`` request through turnout (HTTP -> gateway -> ZeroMQ -> fake worker
  -> PUB/SUB -> gateway -> SSE -> client) vs calling the fake backend's generator
  in-process, interleaved request by request so noise hits both alike;
* throughput: 200 concurrent streams through one gateway (fake, delay 0), every
  stream's text checked token by token against what the fake must produce for its
  own unique prompt (none lost, reordered or crossed);
* cancellation: the client closes its socket mid-stream; the worker stamps
  CLOCK_MONOTONIC when its compute loop stops (``Done.t_stop_ns``, logged by the
  gateway as ``request_cancelled``); latency = that stamp - the client's close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from turnout.bench.stats import pct, summary
from turnout.bench.targets import sse_events
from turnout.protocol.chat import ChatRequest, Message, TextPart
from turnout.supervisor.launch import TurnoutProcess
from turnout.workers.base import Pause, WorkerSpec
from turnout.workers.fake import FakeBackend, reference_tokens

RESULTS = Path(__file__).resolve().parent / "results"

CONFIG = """
[server]
worker_wait_s = 10.0
max_queue_per_worker = 1024

[[models]]
name = "fake"
backend = "fake"

[[models]]
name = "fake-slow"
backend = "fake"
[models.options]
token_delay_ms = 5
"""

_dec = msgspec.json.Decoder()


def body(prompt: str, max_tokens: int, model: str = "fake") -> bytes:
    return msgspec.json.encode({"model": model, "max_tokens": max_tokens, "stream": True,
                                "messages": [{"role": "user", "content": prompt}]})


async def stream_once(session: aiohttp.ClientSession, url: str, headers: dict[str, str], prompt: str,
                      max_tokens: int, model: str = "fake") -> tuple[float, float, list[str]]:
    """(ttft_s, total_s, texts) of one streaming request."""
    t0 = time.perf_counter()
    ttft = 0.0
    texts: list[str] = []
    async with session.post(url, data=body(prompt, max_tokens, model), headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        async for ev, data in sse_events(resp):
            if ev == b"content_block_delta":
                if not texts:
                    ttft = time.perf_counter() - t0
                texts.append(_dec.decode(data)["delta"]["text"])
            elif ev == b"error":
                raise RuntimeError(data.decode())
            elif ev == b"message_stop":
                break
    return ttft, time.perf_counter() - t0, texts


def inproc_once(backend: FakeBackend, prompt: str, max_tokens: int) -> tuple[float, float, list[str]]:
    t0 = time.perf_counter()
    req = ChatRequest(model="fake", max_tokens=max_tokens, messages=[Message("user", [TextPart(prompt)])])
    ttft = 0.0
    texts: list[str] = []
    for item in backend.generate("r", req, None):  # type: ignore[arg-type]
        if isinstance(item, Pause):
            continue
        text = getattr(item, "text", None)
        if text is not None and type(item).__name__ == "TextDelta":
            if not texts:
                ttft = time.perf_counter() - t0
            texts.append(text)
    return ttft, time.perf_counter() - t0, texts


class Interleaved:
    """TTFT side by side: streaming requests to several turnouts running at once, one
    after another in a random order each round, so whatever else the machine does hits
    them alike; with the fake generator's own TTFT in-process each round (the part of
    the TTFT that is not turnout's)."""

    def __init__(self, procs: list[TurnoutProcess], seed: int = 0) -> None:
        self.urls = [tp.base_url + "/v1/messages" for tp in procs]
        self.heads = [{"x-api-key": tp.token, "content-type": "application/json"} for tp in procs]
        self.fake = FakeBackend(WorkerSpec(id="b", backend="fake", model="fake", runtime_dir="/tmp", gateway_ids=[]))
        self.rng = random.Random(seed)
        self.ttft_ms: list[list[float]] = [[] for _ in procs]
        self.inproc_ms: list[float] = []

    async def warm_up(self, s: aiohttp.ClientSession, n: int = 100) -> None:
        for _ in range(n):
            for u, h in zip(self.urls, self.heads, strict=True):
                await stream_once(s, u, h, "warm up", 4)

    async def run(self, s: aiohttp.ClientSession, n: int) -> None:
        order = list(range(len(self.urls)))
        for i in range(n):
            self.rng.shuffle(order)
            for k in order:
                t, _, _ = await stream_once(s, self.urls[k], self.heads[k], f"overhead probe {i}", 4)
                self.ttft_ms[k].append(t * 1e3)
            self.inproc_ms.append(inproc_once(self.fake, f"overhead probe {i}", 4)[0] * 1e3)


async def bench_overhead(t: TurnoutProcess, n: int, long_tokens: int) -> dict[str, Any]:
    backend = FakeBackend(WorkerSpec(id="b", backend="fake", model="fake", runtime_dir="/tmp", gateway_ids=[]))
    url = t.base_url + "/v1/messages"
    headers = {"x-api-key": t.token, "content-type": "application/json"}
    ttft_t, ttft_i, tok_t, tok_i = [], [], [], []
    async with aiohttp.ClientSession() as s:
        for _ in range(20):  # warm up both paths
            await stream_once(s, url, headers, "warm up", 4)
            inproc_once(backend, "warm up", 4)
        for i in range(n):
            prompt = f"overhead probe {i}"
            a, _, _ = await stream_once(s, url, headers, prompt, 4)
            b, _, _ = inproc_once(backend, prompt, 4)
            ttft_t.append(a * 1e3)
            ttft_i.append(b * 1e3)
        for i in range(max(5, n // 20)):
            prompt = f"per token probe {i}"
            a1, a2, ta = await stream_once(s, url, headers, prompt, long_tokens)
            b1, b2, tb = inproc_once(backend, prompt, long_tokens)
            assert ta == tb, "turnout and in-process disagree"
            tok_t.append((a2 - a1) / (long_tokens - 1) * 1e6)
            tok_i.append((b2 - b1) / (long_tokens - 1) * 1e6)
    added = [a - b for a, b in zip(ttft_t, ttft_i, strict=True)]
    return {
        "ttft_ms_turnout": summary(ttft_t),
        "ttft_ms_inprocess": summary(ttft_i),
        "added_ttft_ms": summary(added),
        "per_token_us_turnout": summary(tok_t),
        "per_token_us_inprocess": summary(tok_i),
        "targets": {"added_ttft_p50_ms": 2.0, "added_ttft_p99_ms": 10.0},
        "met": pct(added, 50) < 2.0 and pct(added, 99) < 10.0,
    }


async def bench_throughput(t: TurnoutProcess, streams: int, tokens: int) -> dict[str, Any]:
    url = t.base_url + "/v1/messages"
    headers = {"x-api-key": t.token, "content-type": "application/json"}
    conn = aiohttp.TCPConnector(limit=0)
    bad: list[str] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        await stream_once(s, url, headers, "warm", 4)
        prompts = [f"s{i}a s{i}b s{i}c s{i}d s{i}e" for i in range(streams)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(stream_once(s, url, headers, p, tokens) for p in prompts),
                                       return_exceptions=True)
        wall = time.perf_counter() - t0
    total = 0
    for p, r in zip(prompts, results, strict=True):
        if isinstance(r, BaseException):
            bad.append(f"{p.split()[0]}: {r!r}")
            continue
        texts = r[2]
        total += len(texts)
        if texts != reference_tokens(p, tokens):
            bad.append(f"{p.split()[0]}: stream differs from the reference ({len(texts)} tokens)")
    return {
        "streams": streams, "tokens_per_stream": tokens, "tokens_total": total,
        "wall_s": round(wall, 3), "tokens_per_s": round(total / wall), "streams_bad": len(bad),
        "bad_examples": bad[:5], "target_tokens_per_s": 20000,
        "met": total / wall >= 20000 and not bad,
    }


def _cancel_events(t: TurnoutProcess) -> list[dict[str, Any]]:
    return [e for e in t.log_events() if e.get("event") == "request_cancelled"]


def bench_cancel(t: TurnoutProcess, n: int) -> dict[str, Any]:
    """Sequential, so the k-th cancel log line belongs to the k-th request."""
    lat, gw = [], []
    for i in range(n):
        before = len(_cancel_events(t))
        sock = socket.create_connection(("127.0.0.1", t.port))
        payload = body(f"cancel me {i}", 100000, "fake-slow")
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + t.token.encode() +
                     b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(payload)).encode() +
                     b"\r\n\r\n" + payload)
        seen = b""
        while seen.count(b"content_block_delta") < 6:
            chunk = sock.recv(65536)
            if not chunk:  # an error answer, closed: never wait for ever
                raise RuntimeError(f"the cancel request was answered without a stream: {seen[:300]!r}")
            seen += chunk
        t_close = time.monotonic_ns()
        sock.close()
        deadline = time.monotonic() + 5
        while len(_cancel_events(t)) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("no request_cancelled in the log within 5 s")
            time.sleep(0.005)
        ev = _cancel_events(t)[before]
        lat.append((ev["t_stop_ns"] - t_close) / 1e6)
        gw.append(float(ev["cancel_ms"]))
    return {
        "client_close_to_worker_stop_ms": summary(lat),
        "gateway_cancel_to_worker_stop_ms": summary(gw),
        "target_p99_ms": 50.0,
        "met": pct(lat, 99) < 50.0,
    }


def write_results(res: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(res, indent=2) + "\n")
    o, th, c = res["overhead"], res["throughput"], res["cancel"]
    md = f"""# Gateway + bus overhead (fake backend)

Command: `{res['command']}`  
Date: {res['date']} · machine: {res['machine']}

| measure | turnout | in-process | target | met |
|---|---|---|---|---|
| TTFT p50 (ms) | {o['ttft_ms_turnout']['p50']} | {o['ttft_ms_inprocess']['p50']} | | |
| added TTFT p50 (ms) | {o['added_ttft_ms']['p50']} | | < 2 | {'yes' if o['added_ttft_ms']['p50'] < 2 else 'no'} |
| added TTFT p99 (ms) | {o['added_ttft_ms']['p99']} | | < 10 | {'yes' if o['added_ttft_ms']['p99'] < 10 else 'no'} |
| per-token cost p50 (µs) | {o['per_token_us_turnout']['p50']} | {o['per_token_us_inprocess']['p50']} | | |
| throughput, {th['streams']} concurrent streams (tokens/s) | {th['tokens_per_s']} | | ≥ 20,000 | {'yes' if th['met'] else 'no'} |
| streams lost, reordered or crossed | {th['streams_bad']} of {th['streams']} | | 0 | {'yes' if th['streams_bad'] == 0 else 'no'} |
| cancel: client close → worker loop stopped p50 (ms) | {c['client_close_to_worker_stop_ms']['p50']} | | | |
| cancel: client close → worker loop stopped p99 (ms) | {c['client_close_to_worker_stop_ms']['p99']} | | < 50 | {'yes' if c['met'] else 'no'} |

Overhead: {o['added_ttft_ms']['n']} requests, each through turnout and in-process alternately.
Throughput: {th['tokens_total']} tokens in {th['wall_s']} s, every stream checked token by token.
Cancellation: {c['client_close_to_worker_stop_ms']['n']} streams closed by the client after 6 tokens.
"""
    (RESULTS / "overhead.md").write_text(md)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    t = TurnoutProcess(CONFIG, env={"TURNOUT_LOG_LEVEL": "info"})
    t.start()
    try:
        overhead = await bench_overhead(t, args.requests, args.long_tokens)
        throughput = await bench_throughput(t, args.streams, args.tokens)
        cancel = bench_cancel(t, args.cancels)
    finally:
        t.stop()
    return {
        "command": " ".join(["python -m turnout.bench.overhead", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        "overhead": overhead, "throughput": throughput, "cancel": cancel,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=400, help="TTFT samples")
    p.add_argument("--long-tokens", type=int, default=1000, help="tokens per per-token sample")
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--tokens", type=int, default=500, help="tokens per throughput stream")
    p.add_argument("--cancels", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="small run, results not written")
    args = p.parse_args()
    if args.quick:
        args.requests, args.long_tokens, args.streams, args.tokens, args.cancels = 40, 200, 50, 100, 10
    res = asyncio.run(amain(args))
    if not args.quick:
        write_results(res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
