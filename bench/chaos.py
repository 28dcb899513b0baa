"""Chaos benchmark (issue 4): many concurrent streams while workers are SIGKILLed.

Run:  .venv/bin/python -m turnout.bench.chaos --duration 60 --streams 200
Writes bench/results/chaos.json and bench/results/chaos.md.

A real turnout (supervisor, gateway, ``--workers`` fake workers with a token delay,
so streams overlap and every kill hits requests in flight) serves ``--streams``
concurrent clients for ``--duration`` seconds; each client sends streaming
``/v1/messages`` requests one after another, every one with a unique prompt. Every
``--kill-every`` seconds a ready worker (round robin) is SIGKILLed from outside, as
the OOM killer would.

Each request ends in exactly one class:

* completed: ``message_stop`` and the text equals, token for token, what the fake
  must produce for that request's own prompt;
* clean error: an HTTP error with an API error body (529 and friends), or an
  in-stream ``event: error`` after text that is a correct prefix;
* corrupt: anything else (a wrong or foreign token, a stream cut without an error);
  ``crossed`` counts the corrupt ones that carry another request's tag;
* hung: no byte for ``--hang-s`` seconds.

Also measured: gateway restarts (its pid and the supervisor's count), and the time
from each kill to the replacement worker being ready, from the supervisor's own
event stream (a SUB on its PUB socket, owned by one thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import zmq

from turnout.bench.stats import pct
from turnout.protocol import messages as m
from turnout.protocol.sockets import Endpoints, make_socket
from turnout.supervisor.control import ControlClient, NotRunning
from turnout.supervisor.launch import TurnoutProcess
from turnout.workers.fake import reference_tokens

RESULTS = Path(__file__).resolve().parent / "results"
_TAG = re.compile(r"\bq\d+x\d+\b")

CONFIG = """
[server]
worker_wait_s = 10.0
heartbeat_timeout_s = 10.0
max_queue_per_worker = 4096

[supervisor]
# A worker that has served this long is healthy: each SIGKILL here is a one-off
# (as an OOM kill is), not a crash loop, so the restart is immediate.
healthy_after_s = 5.0

[[models]]
name = "fake"
backend = "fake"
workers = {workers}
[models.options]
token_delay_ms = {delay}
"""


@dataclass
class Tally:
    completed: int = 0
    clean_http_error: int = 0
    clean_stream_error: int = 0
    corrupt: int = 0
    crossed: int = 0
    hung: int = 0
    http_status: dict[str, int] = field(default_factory=dict)
    corrupt_examples: list[str] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)


class EventWatcher(threading.Thread):
    """Owns one SUB socket on the supervisor's events; records (monotonic time, event)."""

    def __init__(self, runtime_dir: Path) -> None:
        super().__init__(name="events", daemon=True)
        self.endpoint = Endpoints(str(runtime_dir)).events
        self.events: list[tuple[float, m.WorkerEvent]] = []
        self.stop = threading.Event()
        self.subscribed = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        sub = make_socket(ctx, zmq.SUB)
        sub.connect(self.endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, m.EVENTS_TOPIC)
        dec = msgspec.msgpack.Decoder(m.Event)
        self.subscribed.set()
        try:
            while not self.stop.is_set():
                if not sub.poll(100):
                    continue
                while True:
                    try:
                        _t, raw = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    ev = dec.decode(raw)
                    if isinstance(ev, m.WorkerEvent):
                        self.events.append((time.monotonic(), ev))
        finally:
            sub.close(0)
            ctx.term()


def _status(t: TurnoutProcess) -> m.StatusReply:
    with ControlClient(t.runtime_dir, timeout_s=5.0) as c:
        st = c.request(m.Status())
    assert isinstance(st, m.StatusReply)
    return st


async def one_request(session: aiohttp.ClientSession, t: TurnoutProcess, prompt: str, n: int,
                      hang_s: float, tally: Tally) -> None:
    expected = "".join(reference_tokens(prompt, n))
    body = {"model": "fake", "max_tokens": n, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    t0 = time.monotonic()
    text = ""
    event = ""
    error = ""
    stopped = False
    try:
        async with session.post(t.base_url + "/v1/messages", json=body, headers={"x-api-key": t.token},
                                timeout=aiohttp.ClientTimeout(total=None, sock_read=hang_s)) as r:
            if r.status != 200:
                tally.http_status[str(r.status)] = tally.http_status.get(str(r.status), 0) + 1
                try:
                    ok = (await r.json())["error"]["type"] != ""
                except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                    ok = False
                if ok:
                    tally.clean_http_error += 1
                else:
                    tally.corrupt += 1
                    tally.corrupt_examples.append(f"HTTP {r.status} without an error body")
                return
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "content_block_delta" and data["delta"]["type"] == "text_delta":
                        text += data["delta"]["text"]
                    elif event == "error":
                        error = data["error"]["type"]
                    elif event == "message_stop":
                        stopped = True
    except TimeoutError:
        tally.hung += 1
        return
    except (aiohttp.ClientError, ValueError) as e:
        tally.corrupt += 1
        tally.corrupt_examples.append(f"{type(e).__name__}: {e}"[:200])
        return
    own = prompt.split()[0]
    foreign = {tag for tag in _TAG.findall(text) if tag != own}
    if foreign:
        tally.crossed += 1
    if stopped and not error and text == expected:
        tally.completed += 1
        tally.durations_s.append(time.monotonic() - t0)
    elif error and not stopped and expected.startswith(text) and not foreign:
        tally.clean_stream_error += 1
    else:
        tally.corrupt += 1
        if len(tally.corrupt_examples) < 10:
            tally.corrupt_examples.append(f"stop={stopped} error={error!r} got={text[:80]!r} want={expected[:80]!r}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    t = TurnoutProcess(CONFIG.format(workers=args.workers, delay=args.token_delay_ms),
                       env={"TURNOUT_LOG_LEVEL": "warning"})
    t.start(timeout=60)
    watcher = EventWatcher(t.runtime_dir)
    watcher.start()
    watcher.subscribed.wait(5)
    tally = Tally()
    kills: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 20
        while len([w for w in _status(t).workers if w.state == "ready"]) < args.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready")
            await asyncio.sleep(0.05)
        st0 = _status(t)
        gw_pid0 = st0.gateway_pid
        rng = random.Random(args.seed)
        end = time.monotonic() + args.duration

        async def client(i: int, session: aiohttp.ClientSession) -> None:
            k = 0
            while time.monotonic() < end:
                words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "eps")) for _ in range(3))
                await one_request(session, t, f"q{i}x{k} {words}", args.tokens, args.hang_s, tally)
                k += 1

        async def killer() -> None:
            rr = 0
            await asyncio.sleep(args.kill_every)
            while time.monotonic() < end - 1.0:
                st = await asyncio.to_thread(_status, t)
                ready = sorted((w for w in st.workers if w.state == "ready" and w.pid), key=lambda w: w.id)
                if ready:
                    w = ready[rr % len(ready)]
                    rr += 1
                    try:
                        os.kill(w.pid, signal.SIGKILL)
                        kills.append({"t": time.monotonic(), "worker": w.id, "pid": w.pid,
                                      "in_flight": w.in_flight})
                    except ProcessLookupError:
                        pass
                await asyncio.sleep(args.kill_every)

        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            t_start = time.monotonic()
            await asyncio.gather(killer(), *(client(i, session) for i in range(args.streams)))
            elapsed = time.monotonic() - t_start
        # wait (bounded) for the last replacements to be ready before reading events
        settle = time.monotonic() + 15
        while time.monotonic() < settle and len([w for w in _status(t).workers if w.state == "ready"]) < args.workers:
            await asyncio.sleep(0.05)
        st1 = _status(t)
    finally:
        watcher.stop.set()
        watcher.join(2)
        code = t.stop()
    recover: list[float] = []
    unrecovered = 0
    for k in kills:
        ready_at = next((ts for ts, ev in watcher.events
                         if ev.worker_id == k["worker"] and ev.state == "ready" and ev.pid != k["pid"] and ts > k["t"]),
                        None)
        if ready_at is None:
            unrecovered += 1
        else:
            k["recovered_s"] = round(ready_at - k["t"], 4)
            recover.append(ready_at - k["t"])
    total = (tally.completed + tally.clean_http_error + tally.clean_stream_error + tally.corrupt + tally.hung)
    d = tally.durations_s
    return {
        "requests": total,
        "completed": tally.completed,
        "clean_errors": tally.clean_http_error + tally.clean_stream_error,
        "clean_http_errors": tally.clean_http_error,
        "clean_in_stream_errors": tally.clean_stream_error,
        "http_status": tally.http_status,
        "corrupt": tally.corrupt,
        "crossed": tally.crossed,
        "hung": tally.hung,
        "corrupt_examples": tally.corrupt_examples[:10],
        "gateway_restarts": st1.gateway_restarts,
        "gateway_pid_unchanged": st1.gateway_pid == gw_pid0,
        "kills": len(kills),
        "unrecovered_kills": unrecovered,
        "kill_to_ready_s": {"p50": round(pct(recover, 50), 4) if recover else None,
                            "p90": round(pct(recover, 90), 4) if recover else None,
                            "max": round(max(recover), 4) if recover else None},
        "worker_restarts": sum(w.restarts for w in st1.workers),
        "completed_per_s": round(tally.completed / elapsed, 1),
        "request_s": {"p50": round(pct(d, 50), 3) if d else None, "p99": round(pct(d, 99), 3) if d else None},
        "elapsed_s": round(elapsed, 2),
        "turnout_exit_code": code,
        "leftovers": t.leftovers(),
        "kill_log": [{k2: v for k2, v in k.items() if k2 != "t"} for k in kills],
    }


def write(res: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join([".venv/bin/python", "-m", "turnout.bench.chaos", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    doc = {"meta": meta, "results": res}
    (out / "chaos.json").write_text(json.dumps(doc, indent=2) + "\n")
    kr = res["kill_to_ready_s"]
    lines = [
        "# Chaos: concurrent streams while workers are SIGKILLed",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}",
        "",
        f"{args.streams} clients stream `/v1/messages` back to back for {args.duration:g} s against a real "
        f"turnout with {args.workers} fake workers ({args.tokens} tokens per request, {args.token_delay_ms:g} ms "
        f"apart); a ready worker is SIGKILLed every {args.kill_every:g} s (round robin). Every request has a "
        "unique prompt and its text is checked token by token against what the fake must produce for it.",
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| requests | {res['requests']} | |",
        f"| completed (exact text) | {res['completed']} | |",
        f"| clean errors | {res['clean_errors']} ({res['clean_in_stream_errors']} in-stream `overloaded_error`, "
        f"{res['clean_http_errors']} HTTP {', '.join(sorted(res['http_status'])) or '-'}) | |",
        f"| hung | {res['hung']} | 0 |",
        f"| corrupt or cut | {res['corrupt']} | 0 |",
        f"| crossed (another request's text) | {res['crossed']} | 0 |",
        f"| gateway restarts | {res['gateway_restarts']} (pid unchanged: {res['gateway_pid_unchanged']}) | 0 |",
        f"| workers killed | {res['kills']} (not back: {res['unrecovered_kills']}) | |",
        f"| kill → replacement ready, p50 / p90 / max | {kr['p50']} / {kr['p90']} / {kr['max']} s | |",
        f"| completed per second | {res['completed_per_s']} | |",
        f"| request duration p50 / p99 (completed) | {res['request_s']['p50']} / {res['request_s']['p99']} s | |",
        f"| leftover processes or sockets after stop | {len(res['leftovers'])} | 0 |",
        "",
        "Clean errors are the requests that were on a worker when it was killed: the gateway ends each with "
        "an in-stream `overloaded_error` (or a 529 before the first byte), after text that is a correct "
        "prefix. The replacement time is from the SIGKILL to the supervisor's `ready` event for the new "
        "worker (spawn of a fresh interpreter, imports, load, handshake); `healthy_after_s = 5` makes each "
        "kill a one-off crash (restart after 0.05 s) rather than a growing backoff.",
    ]
    if res["corrupt_examples"]:
        lines += ["", "Corrupt examples:", ""] + [f"- `{e}`" for e in res["corrupt_examples"]]
    (out / "chaos.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m turnout.bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kill-every", type=float, default=3.0)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--token-delay-ms", type=float, default=20.0)
    p.add_argument("--hang-s", type=float, default=20.0, help="no byte for this long: hung")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    try:
        res = asyncio.run(run(args))
    except NotRunning as e:
        print(f"chaos: turnout stopped answering: {e}", file=sys.stderr)
        return 1
    write(res, args, Path(args.out))
    summary = {k: v for k, v in res.items() if k not in ("kill_log", "corrupt_examples")}
    print(json.dumps(summary, indent=2))
    bad = res["hung"] + res["corrupt"] + res["crossed"] + res["gateway_restarts"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
