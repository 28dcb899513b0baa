"""Claude Code's shared prefix, computed once: across sessions, subagents, a restart and
several workers (issue 13). The default model, real captured Claude Code requests.

Run:  .venv/bin/python -m turnout.bench.prefix [--phase sessions|routing|all] [--quick]
Writes bench/results/prefix.json and bench/results/prefix.md (not with --quick).

Every request is a real one from tests/fixtures/claude-code, sent as Claude Code sent it
(headers, ``?beta=true``, streaming), with its session made new where a new session is
meant: a fresh ``X-Claude-Code-Session-Id`` / ``metadata.user_id`` session and a fresh
billing-header hash, as Claude Code writes them per session. Answers are greedy
(``temperature: 0``) so they can be compared; TTFT is request sent -> first text.

**sessions** (``turnout up --daemon`` with one llama_cpp worker of the default model,
its default options, an empty KV directory):

1. *cold*: session A's first request (01-print-hello): the cold full prefill every
   ratio below divides by, and the reference answer.
2. *new session*: session B's first request (03-tool-bash; another hash, other words).
3. *subagent-shaped*: a third session with the same tools and system prompt and
   another first message (a task, no agent list: what a subagent sends).
4. session A's request again: restored from the state in RAM.
5. *restart*: ``turnout down``, ``turnout up --daemon`` on the same cache directory,
   then the first request of a new session (03-tool-bash, fresh ids), then session
   A's request again: restored from the shared prefix on disk, the rest prefilled.
Greedy answers of 4 and 5 (restored states) must equal 1's (cold); decode tokens/s
of 1, 4 and 5 are reported side by side.

**routing** (``workers = 3``, both runs starting from fresh workers and the same
disk state of the shared prefix, so only the routing differs): six Claude Code
sessions at once, five turns each. Turn 1 is 01-print-hello's request with the
session's own words; each next turn appends the model's answer with a ``Read`` tool
call and its ``tool_result`` (the first 300-1,500 characters of a source file of this
repository, line-numbered as Claude Code's Read tool returns them), after a pause of
0.5-6 s (the tool running, the user reading): sessions do not move in lockstep, as
real ones do not (a first run with equal turns and no pauses kept every session on
one worker under least-loaded routing too). Sizes and pauses are drawn from a seeded
generator, the same for both runs. and the request goes out again: the shape of a real
session. Run once with ``worker_routing = "cache_aware"`` (the default) and once
with ``"least_loaded"``. A follow-up turn *hits* when its answer reports at least the
previous turn's whole prompt as read from cache (only the worker that ran that turn
holds it). Load per worker: requests it ran (``/admin/workers``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from turnout.supervisor.launch import TurnoutProcess

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "claude-code"
RESULTS = Path(__file__).resolve().parent / "results"
MAIN, OTHER = "01-print-hello-request-2.json", "03-tool-bash-request-2.json"
SUBAGENT_TASK = ("Search the repository for where the TOML config file is loaded and validated. "
                 "Report the file path, the function names and what happens to an unknown key. Be brief.")
SESSION_WORDS = ["say hello", "what does this project do?", "list the workers", "explain the gateway",
                 "how are keys stored?", "where is the bus?"]
READ_FILES = ["gateway/telemetry.py", "gateway/streams.py", "workers/signing.py", "gateway/auth.py",
              "protocol/ids.py", "workers/audio_encode.py", "bench/stats.py", "gateway/collect.py",
              "workers/media.py", "gateway/errors.py", "protocol/logs.py", "supervisor/memory.py"]

# Per tool result, 300-1,500 characters (~90-450 tokens): a token at this depth costs ~50 ms
# here, so the run stays under ~30 min.
READ_CHARS = (300, 1500)
PAUSE_S = (0.5, 6.0)

CONFIG = """
[server]
worker_wait_s = 600.0
{server}

[[models]]
name = "gemma3-270m"
backend = "llama_cpp"
aliases = ["claude-*", "some-local-model"]
workers = {workers}
[models.options]
tool_detail = "full"  # Claude Code's ~19.5k-token prompt, tools as JSON specs, as instruction models get it
{options}
"""


def config(workers: int = 1, server: str = "", options: str = "") -> str:
    return CONFIG.format(workers=workers, server=server, options=options)


# ---------------------------------------------------------------- requests


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


def new_session(name: str, words: str | None = None, *, subagent: bool = False, max_tokens: int = 32) -> dict[str, Any]:
    """A captured request as the first request of a new session: fresh session id and
    billing hash; ``words`` replace the user's own text; ``subagent``: one user
    message (the task), no agent list."""
    rec = copy.deepcopy(fixture(name))
    body, headers = rec["body"], rec["headers"]
    sid = str(uuid.uuid4())
    headers["X-Claude-Code-Session-Id"] = sid
    user = json.loads(body["metadata"]["user_id"])
    user["session_id"] = sid
    body["metadata"]["user_id"] = json.dumps(user)
    body["system"][0]["text"] = re.sub(r"cc_version=([0-9.]+)\.[0-9a-f]+;",
                                       lambda mt: f"cc_version={mt.group(1)}.{secrets.token_hex(2)[:3]};",
                                       body["system"][0]["text"])
    if words is not None:
        body["messages"][0]["content"][-1]["text"] = words
    if subagent:
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": SUBAGENT_TASK}]}]
    body["max_tokens"] = max_tokens
    body["temperature"] = 0.0
    body.pop("thinking", None)  # greedy answers to compare; thinking has no meaning on a base model
    return rec


class Answer:
    def __init__(self) -> None:
        self.ttft = 0.0
        self.total = 0.0
        self.text = ""
        self.usage: dict[str, Any] = {}
        self.t_first = 0.0
        self.t_last = 0.0

    def decode_tps(self) -> float:
        n = int(self.usage.get("output_tokens", 0))
        return (n - 1) / (self.t_last - self.t_first) if n > 1 and self.t_last > self.t_first else 0.0


def send(t: TurnoutProcess | Daemon, rec: dict[str, Any]) -> Answer:
    headers = {k: v for k, v in rec["headers"].items()
               if k.lower() not in ("host", "content-length", "connection", "accept-encoding", "authorization")}
    headers["Authorization"] = f"Bearer {t.token}"
    url = f"{t.base_url}{rec['path']}?{rec['query']}" if rec.get("query") else t.base_url + rec["path"]
    http = urllib.request.Request(url, data=json.dumps(rec["body"]).encode(), headers=headers, method="POST")
    a = Answer()
    t0 = time.perf_counter()
    with urllib.request.urlopen(http, timeout=1800) as resp:
        event = ""
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
                continue
            if not line.startswith("data: "):
                continue
            data = json.loads(line[6:])
            if event == "content_block_delta" and data["delta"].get("text"):
                now = time.perf_counter()
                a.t_first = a.t_first or now
                a.t_last = now
                a.text += data["delta"]["text"]
            elif event == "message_start":
                a.usage.update(data["message"]["usage"])
            elif event == "message_delta":
                a.usage.update(data["usage"])
            elif event == "error":
                raise RuntimeError(f"stream error: {data}")
    a.total = time.perf_counter() - t0
    a.ttft = (a.t_first or time.perf_counter()) - t0
    return a


class Daemon:
    """``turnout up --daemon`` / ``turnout down``, as a user runs them (state and
    config under ``workdir``, the cache in ``cache_dir``)."""

    def __init__(self, cfg: str, cache_dir: Path, workdir: Path) -> None:
        from turnout.supervisor.launch import free_port

        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.toml").write_text(cfg)
        self.workdir = workdir
        self.port = free_port()
        self.token = "bench-token-0123456789"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TURNOUT_CACHE_DIR": str(cache_dir), "TURNOUT_TOKEN": self.token,
                    "XDG_STATE_HOME": str(workdir / "state"), "OMP_WAIT_POLICY": "PASSIVE"}

    def cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "turnout.cli", *args, "--port", str(self.port)], env=self.env,
                       check=True, capture_output=True, timeout=600)

    def up(self) -> Daemon:
        self.cli("up", "--daemon", "--config", str(self.workdir / "config.toml"))
        return self

    def down(self) -> None:
        self.cli("down")


def start(cfg: str, cache_dir: Path, workdir: Path) -> TurnoutProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    t = TurnoutProcess(cfg, workdir=str(workdir), env={
        "TURNOUT_CACHE_DIR": str(cache_dir), "TURNOUT_LOG_LEVEL": "info", "OMP_WAIT_POLICY": "PASSIVE"})
    return t.start(timeout=300)


def row(label: str, a: Answer) -> dict[str, Any]:
    return {"what": label, "ttft_s": round(a.ttft, 3), "total_s": round(a.total, 3),
            "input_tokens": a.usage.get("input_tokens"),
            "cache_read_input_tokens": a.usage.get("cache_read_input_tokens"),
            "output_tokens": a.usage.get("output_tokens"), "decode_tps": round(a.decode_tps(), 2), "text": a.text}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- sessions


def phase_sessions(base: Path) -> dict[str, Any]:
    cache = base / "cache"
    a_req, b_req = new_session(MAIN), new_session(OTHER)
    t = Daemon(config(), cache, base / "run1").up()
    try:
        log("1/5 session A, cold")
        cold = send(t, a_req)
        log(f"   {cold.ttft:.1f} s; 2/5 session B (new session)")
        b = send(t, b_req)
        log(f"   {b.ttft:.2f} s; 3/5 subagent-shaped request")
        sub = send(t, new_session(MAIN, subagent=True))
        log(f"   {sub.ttft:.2f} s; 4/5 session A again (state in RAM)")
        a_ram = send(t, a_req)
        log(f"   {a_ram.ttft:.2f} s")
    finally:
        t.down()
    log("5/5 turnout down; turnout up; a new session, then session A again (state on disk)")
    t2 = Daemon(config(), cache, base / "run2").up()
    try:
        again = send(t2, new_session(OTHER))
        log(f"   {again.ttft:.2f} s")
        a_disk = send(t2, a_req)
        log(f"   {a_disk.ttft:.2f} s")
    finally:
        t2.down()
    kv_files = sorted(p.name for p in (cache / "kv").glob("*/*.kvstate"))
    rows = [row("cold: session A (reference answer)", cold), row("new session: session B", b),
            row("subagent-shaped: same tools, a task as first message", sub),
            row("session A again (state in RAM)", a_ram),
            row("after turnout down + up: a new session (03-tool-bash)", again),
            row("after turnout down + up: session A again (shared prefix from disk)", a_disk)]
    return {
        "rows": rows,
        "ratios": {"new_session": b.ttft / cold.ttft, "subagent": sub.ttft / cold.ttft, "restart": again.ttft / cold.ttft},
        "same_answer": {"ram": a_ram.text == cold.text, "disk": a_disk.text == cold.text},
        "decode_tps": {"cold": cold.decode_tps(), "ram": a_ram.decode_tps(), "disk": a_disk.decode_tps()},
        "kv_files": kv_files,
    }


# ---------------------------------------------------------------- routing


def _read_result(i: int, turn: int, chars: int) -> tuple[str, str]:
    """What Claude Code's Read tool returns for a file (line-numbered), and its path."""
    path = READ_FILES[(i * 4 + turn) % len(READ_FILES)]
    lines = (ROOT / path).read_text()[:chars].splitlines()
    return "\n".join(f"{n + 1:6}\t{x}" for n, x in enumerate(lines)), path


def run_session(t: TurnoutProcess, i: int, turns: int, out: list[dict[str, Any]]) -> None:
    rec = new_session(MAIN, SESSION_WORDS[i % len(SESSION_WORDS)], max_tokens=12)
    body = rec["body"]
    prev_prompt = 0
    rng = random.Random(1000 + i)  # the same sizes and pauses in both runs
    for turn in range(turns):
        if turn:
            time.sleep(rng.uniform(*PAUSE_S))
        a = send(t, rec)
        prompt = int(a.usage.get("input_tokens", 0)) + int(a.usage.get("cache_read_input_tokens", 0))
        cached = int(a.usage.get("cache_read_input_tokens", 0))
        out.append({"session": i, "turn": turn + 1, "ttft_s": round(a.ttft, 3), "total_s": round(a.total, 3),
                    "prompt_tokens": prompt, "cache_read_input_tokens": cached,
                    "hit": bool(turn and cached >= prev_prompt - 1)})
        prev_prompt = prompt
        content, path = _read_result(i, turn, rng.randint(*READ_CHARS))
        tool_id = f"toolu_{i}{turn}{secrets.token_hex(8)}"
        body["messages"].append({"role": "assistant", "content": [
            *([{"type": "text", "text": a.text}] if a.text.strip() else []),
            {"type": "tool_use", "id": tool_id, "name": "Read", "input": {"file_path": f"/home/dev/project/{path}"}}]})
        body["messages"].append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": content}]})


def routing_run(policy: str, cache: Path, workdir: Path, sessions: int, turns: int) -> dict[str, Any]:
    t = start(config(workers=3, server=f'worker_routing = "{policy}"'), cache, workdir)
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=run_session, args=(t, i, turns, rows)) for i in range(sessions)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        workers: list[dict[str, Any]] = [w for w in t.admin_workers() if w.get("model") == "gemma3-270m"]
    finally:
        t.stop()
    if len(rows) != sessions * turns:
        raise RuntimeError(f"{policy}: {len(rows)} of {sessions * turns} requests answered")
    follow = [r for r in rows if r["turn"] > 1]
    loads = [sum(dict(w.get("routed") or {}).values()) for w in workers]
    mean = sum(loads) / len(loads)
    return {"policy": policy, "wall_s": round(wall, 1), "hit_rate": sum(r["hit"] for r in follow) / len(follow),
            "loads": loads, "max_over_mean": max(loads) / mean if mean else 0.0,
            "prefill_tokens": [int(w.get("prompt_tokens", 0)) - int(w.get("cache_read_input_tokens", 0)) for w in workers],
            "routed": [w.get("routed") for w in workers], "requests": rows}


def phase_routing(base: Path, sessions: int, turns: int) -> dict[str, Any]:
    cache = base / "cache"
    if not list((cache / "kv").glob("*/*.kvstate")):
        # Both runs start from the same disk state of the shared prefix.
        log("routing: warming the shared prefix on disk")
        t = Daemon(config(), cache, base / "warm").up()
        try:
            send(t, new_session(MAIN))
        finally:
            t.down()
    out = {}
    for policy in ("cache_aware", "least_loaded"):
        log(f"routing: {policy}, {sessions} sessions x {turns} turns on 3 workers")
        out[policy] = routing_run(policy, cache, base / policy, sessions, turns)
        r = out[policy]
        log(f"   wall {r['wall_s']} s, hits {r['hit_rate']:.2f}, loads {r['loads']}")
    out["wall_ratio"] = out["cache_aware"]["wall_s"] / out["least_loaded"]["wall_s"]
    return out


# ---------------------------------------------------------------- report


def report(res: dict[str, Any]) -> str:
    lines = ["# Claude Code's shared prefix, computed once (issue 13)", "",
             "Command: `python -m turnout.bench.prefix`  ",
             f"Date: {res['date']} · machine: {res['machine']} · model: the default (Gemma 3 270M Q4_K_M), "
             "one llama_cpp worker (sessions) or three (routing), default options · greedy answers", ""]
    s = res.get("sessions")
    if s:
        lines += ["| request | TTFT (s) | prompt tokens read from cache / total | decode tok/s | answer |",
                  "|---|---|---|---|---|"]
        for r in s["rows"]:
            total = (r["input_tokens"] or 0) + (r["cache_read_input_tokens"] or 0)
            lines.append(f"| {r['what']} | {r['ttft_s']:.2f} | {r['cache_read_input_tokens']} / {total} | "
                         f"{r['decode_tps']:.1f} | {json.dumps(r['text'][:60])} |")
        q = s["ratios"]
        lines += ["", "| target | value | met |", "|---|---|---|",
                  f"| new session TTFT ÷ cold | {q['new_session']:.3f} (≤ 0.15) | {'yes' if q['new_session'] <= 0.15 else 'NO'} |",
                  f"| subagent-shaped TTFT ÷ cold | {q['subagent']:.3f} (≤ 0.15) | {'yes' if q['subagent'] <= 0.15 else 'NO'} |",
                  f"| after down + up, new session TTFT ÷ cold | {q['restart']:.3f} (≤ 0.20) | {'yes' if q['restart'] <= 0.20 else 'NO'} |",
                  f"| greedy answer with restored state = cold answer (RAM / disk) | {s['same_answer']['ram']} / "
                  f"{s['same_answer']['disk']} | {'yes' if all(s['same_answer'].values()) else 'NO'} |",
                  "| decode tok/s cold / RAM-restored / disk-restored | "
                  + " / ".join(f"{v:.1f}" for v in s["decode_tps"].values()) + " | |", "",
                  f"States on disk after the run: {len(s['kv_files'])} files.", ""]
    r = res.get("routing")
    if r:
        ca, ll = r["cache_aware"], r["least_loaded"]
        lines += ["| routing (3 workers, 6 sessions x 5 turns) | wall (s) | follow-up turns hitting their prefix's worker "
                  "| requests per worker | prefill tokens per worker |", "|---|---|---|---|---|"]
        for x in (ca, ll):
            lines.append(f"| {x['policy']} | {x['wall_s']:.1f} | {x['hit_rate'] * 100:.0f}% | "
                         f"{' / '.join(map(str, x['loads']))} | {' / '.join(map(str, x['prefill_tokens']))} |")
        lines += ["", "| target | value | met |", "|---|---|---|",
                  f"| follow-up turns on the worker holding their prefix | {ca['hit_rate'] * 100:.0f}% (≥ 95%) | "
                  f"{'yes' if ca['hit_rate'] >= 0.95 else 'NO'} |",
                  f"| wall time cache-aware ÷ least-loaded | {r['wall_ratio']:.3f} (≤ 0.5) | {'yes' if r['wall_ratio'] <= 0.5 else 'NO'} |",
                  f"| busiest worker ÷ mean load | {ca['max_over_mean']:.2f} (≤ 2) | {'yes' if ca['max_over_mean'] <= 2 else 'NO'} |", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=["sessions", "routing", "all"], default="all")
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--workdir", help="where caches, configs and logs go (default: a new temp dir)")
    p.add_argument("--quick", action="store_true", help="results not written")
    args = p.parse_args()
    import tempfile

    base = Path(args.workdir or tempfile.mkdtemp(prefix="bench-prefix-"))
    base.mkdir(parents=True, exist_ok=True)
    log(f"working in {base}")
    # The default model, assembled once into this run's cache (its kv/ starts empty).
    env_before = os.environ.get("TURNOUT_CACHE_DIR")
    os.environ["TURNOUT_CACHE_DIR"] = str(base / "cache")
    from turnout.workers import models

    models.ensure_default_model(progress=False)
    if env_before is not None:
        os.environ["TURNOUT_CACHE_DIR"] = env_before
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    out = RESULTS / "prefix.json"
    if out.exists() and not args.quick and args.phase != "all":
        old = json.loads(out.read_text())
        res.update({k: v for k, v in old.items() if k in ("sessions", "routing")})

    def save() -> None:  # after each phase: a long run that stops keeps what it measured
        text = report(res)
        print(text, flush=True)
        if not args.quick:
            RESULTS.mkdir(exist_ok=True)
            out.write_text(json.dumps(res, indent=1))
            (RESULTS / "prefix.md").write_text(text + "\n")

    if args.phase in ("sessions", "all"):
        res["sessions"] = phase_sessions(base)
        save()
    if args.phase in ("routing", "all"):
        res["routing"] = phase_routing(base, args.sessions, args.turns)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
