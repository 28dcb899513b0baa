"""The README's plain path, timed end to end: a fresh ``turnout up`` with nothing
configured (no config file) serving the bundled default model, then the real
``claude -p "say hello"``

* **by hand**: ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_AUTH_TOKEN`` only;
* **after setup**: ``turnout claude setup`` into a temporary HOME, then ``claude``
  with nothing else set (the settings it wrote carry the URL, the token, the
  models and the limits, and its MCP server is registered).

Run:  .venv/bin/python -m turnout.bench.plain_path [--runs N] [--out bench/results/plain-path]
(under the shared lock: ``flock /tmp/turnout-heavy.lock …``). Writes
``plain-path.json`` and ``plain-path.md``.

Each path gets its own fresh ``turnout up`` (a new worker: nothing in its KV cache,
so Claude Code's prompt, ~4k tokens with its tools a line each for the base model,
is prefilled cold; the shared-prefix states on disk are kept in each walk's own
cache directory, so no walk starts from another's), with the model assembled
beforehand into a temporary cache directory (what the first ``./run up`` does
once). Claude Code talks to turnout through a small recording proxy, which times
each API call: TTFT is from the request to the first streamed content (so it is the
prompt's prefill, plus tokenising it), prefill tokens/s is the prompt's tokens over
that, and the stop reason and token counts are those of the answer. Only bodies'
shapes are kept, never headers (the token).

Also used by ``tests/e2e/test_plain_path.py`` (the same walk, asserted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turnout.supervisor.launch import TurnoutProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PROMPT = "say hello"
TARGET_S = 90.0


def claude_bin() -> str:
    """The Claude Code CLI: ``.tools`` (installed by ./run tests), else PATH."""
    local = ROOT / ".tools" / "node_modules" / ".bin" / "claude"
    if local.exists():
        return str(local)
    found = shutil.which("claude")
    if found is None:
        raise RuntimeError("the Claude Code CLI is not installed: ./run tests installs it into .tools/")
    return found


# ---------------------------------------------------------------- recording proxy


@dataclass
class Call:
    """One API call Claude Code made, as the proxy saw it."""

    method: str
    path: str
    status: int = 0
    seconds: float = 0.0
    ttft_s: float | None = None  # request -> first content block
    client_closed: bool = False  # Claude Code gave up on it (its stream watchdog: no content for 300 s)
    body: dict[str, Any] = field(default_factory=dict)
    response: bytes = b""

    def answer(self) -> dict[str, Any]:
        """Stop reason, usage and text of a Messages answer (streamed or not)."""
        text = self.response.decode(errors="replace")
        out: dict[str, Any] = {"text": "", "stop_reason": None, "input_tokens": 0, "cache_read_input_tokens": 0,
                               "output_tokens": 0, "error": None}
        if not text.startswith("event:"):
            try:
                d = json.loads(text)
            except ValueError:
                return out
            if d.get("type") == "error":
                out["error"] = d.get("error")
                return out
            u = d.get("usage") or {}
            out.update(text="".join(b.get("text", "") for b in d.get("content", []) if b.get("type") == "text"),
                       stop_reason=d.get("stop_reason"), input_tokens=u.get("input_tokens", 0),
                       cache_read_input_tokens=u.get("cache_read_input_tokens", 0),
                       output_tokens=u.get("output_tokens", 0))
            return out
        for raw in text.split("\n\n"):
            ev, data = "", ""
            for line in raw.splitlines():
                if line.startswith("event: "):
                    ev = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
            if not ev or not data:
                continue
            d = json.loads(data)
            if ev == "message_start":
                u = d["message"].get("usage", {})
                out["input_tokens"] = u.get("input_tokens", 0)
                out["cache_read_input_tokens"] = u.get("cache_read_input_tokens", 0)
            elif ev == "content_block_delta" and d["delta"].get("type") == "text_delta":
                out["text"] += d["delta"]["text"]
            elif ev == "message_delta":
                out["stop_reason"] = d["delta"].get("stop_reason")
                out["output_tokens"] = d.get("usage", {}).get("output_tokens", 0)
            elif ev == "error":
                out["error"] = d.get("error")
        return out

    def summary(self) -> dict[str, Any]:
        a = self.answer()
        b = self.body
        n_in = a["input_tokens"] + a["cache_read_input_tokens"]
        return {
            "path": self.path, "status": self.status, "model": b.get("model"), "max_tokens": b.get("max_tokens"),
            "tools": len(b.get("tools", [])), "stop_reason": a["stop_reason"], "error": a["error"],
            "input_tokens": a["input_tokens"], "cache_read_input_tokens": a["cache_read_input_tokens"],
            "output_tokens": a["output_tokens"], "seconds": round(self.seconds, 2), "client_closed": self.client_closed,
            "ttft_s": round(self.ttft_s, 2) if self.ttft_s is not None else None,
            "prefill_tps": round(a["input_tokens"] / self.ttft_s, 1) if self.ttft_s and a["input_tokens"] else None,
            "decode_tps": round(a["output_tokens"] / (self.seconds - self.ttft_s), 1)
            if self.ttft_s is not None and a["output_tokens"] > 1 and self.seconds > self.ttft_s else None,
            "prompt_tokens": n_in, "text": a["text"][:300],
        }


class Proxy:
    """A reverse proxy in front of turnout that records every exchange (bodies,
    never headers) and when the first content block of each answer came."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.calls: list[Call] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def messages(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path.startswith("/v1/messages")
                and "count_tokens" not in c.path]

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        call = Call(request.method, request.path_qs, body=body if isinstance(body, dict) else {})
        self.calls.append(call)
        t0 = time.monotonic()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=raw,
                                         headers=headers) as up:
            call.status = up.status
            resp = web.StreamResponse(status=up.status)
            for k in ("Content-Type", "Mcp-Session-Id", "mcp-session-id"):
                if k in up.headers:
                    resp.headers[k] = up.headers[k]
            await resp.prepare(request)
            chunks = []
            streamed = "event-stream" in up.headers.get("Content-Type", "")
            try:
                async for chunk in up.content.iter_any():
                    if call.ttft_s is None and streamed and b"event: content_block_start" in chunk:
                        call.ttft_s = time.monotonic() - t0
                    chunks.append(chunk)
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionResetError:
                call.client_closed = True
            call.response = b"".join(chunks)
        call.seconds = time.monotonic() - t0
        return resp

    def start(self) -> Proxy:
        ready = threading.Event()

        async def serve() -> None:
            from aiohttp import ClientSession, ClientTimeout, web

            self._session = ClientSession(timeout=ClientTimeout(total=None, sock_read=1800))
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()
            await runner.cleanup()
            await self._session.close()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(serve(),), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("recording proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# ---------------------------------------------------------------- the walk


@dataclass
class Walk:
    """One ``claude -p "say hello"`` against a fresh ``turnout up``."""

    path: str  # "by hand" | "after setup"
    wall_s: float = 0.0
    returncode: int = -1
    result: dict[str, Any] = field(default_factory=dict)  # Claude Code's --output-format json
    calls: list[dict[str, Any]] = field(default_factory=list)  # POST /v1/messages, summarised
    settings_env: dict[str, str] = field(default_factory=dict)  # what setup wrote (the token masked)
    setup_output: str = ""
    stderr: str = ""
    leftovers: list[str] = field(default_factory=list)  # processes or sockets left after turnout stopped
    worker: list[dict[str, Any]] = field(default_factory=list)  # the llama_cpp worker's "generation" log lines


def assembled_cache(where: Path) -> Path:
    """A cache directory holding the assembled default model (what the first
    ``./run up`` does once)."""
    env = dict(os.environ, TURNOUT_CACHE_DIR=str(where))
    subprocess.run([sys.executable, "-c", "from workers import models; models.ensure_default_model(progress=False)"],
                   env=env, check=True, cwd=ROOT)
    return where


def claude_env(home: Path) -> dict[str, str]:
    """What every run of claude gets: a HOME of its own, and no traffic that is
    not the API (MEASURED.md)."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1"}


def walk(path: str, cache: Path, timeout: float = 900.0) -> Walk:
    """Start turnout with no config file, run ``claude -p "say hello"`` the ``path``
    way, and stop everything."""
    w = Walk(path)
    base = Path(tempfile.mkdtemp(prefix="plain-path-"))
    home, work = base / "home", base / "home" / "work"
    work.mkdir(parents=True)
    (base / "turnout").mkdir()
    # the assembled model is shared; the KV states turnout saves are this walk's own
    (base / "cache").mkdir()
    (base / "cache" / "models").symlink_to(cache / "models", target_is_directory=True)
    t = TurnoutProcess(None, workdir=str(base / "turnout"), env={"TURNOUT_CACHE_DIR": str(base / "cache")})
    proxy: Proxy | None = None
    try:
        t.start(timeout=300)
        proxy = Proxy(t.base_url).start()
        env = claude_env(home)
        if path == "by hand":
            env.update(ANTHROPIC_BASE_URL=proxy.url, ANTHROPIC_AUTH_TOKEN=t.token)
        else:
            # `turnout claude setup` as the user runs it: the token from turnout's own
            # store (here TURNOUT_TOKEN, as the test turnout runs), files under HOME.
            setup_env = dict(env, TURNOUT_TOKEN=t.token, PYTHONPATH=str(ROOT),
                             XDG_STATE_HOME=str(home / ".local/state"), XDG_CONFIG_HOME=str(home / ".config"))
            out = subprocess.run([sys.executable, "-m", "turnout.cli", "claude", "--url", proxy.url, "setup"],
                                 env=setup_env, cwd=work, capture_output=True, text=True, timeout=120)
            w.setup_output = (out.stdout + out.stderr).replace(t.token, "<token>")
            if out.returncode != 0:
                raise RuntimeError(f"turnout claude setup failed: {w.setup_output}")
            written = json.loads((home / ".claude" / "settings.json").read_text()).get("env", {})
            w.settings_env = {k: ("<token>" if v == t.token else v) for k, v in written.items()}
        t0 = time.monotonic()
        out = subprocess.run([claude_bin(), "-p", PROMPT, "--output-format", "json"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=timeout)
        w.wall_s = round(time.monotonic() - t0, 1)
        w.returncode = out.returncode
        w.stderr = out.stderr[-2000:].replace(t.token, "<token>")
        try:
            w.result = json.loads(out.stdout)
        except ValueError:
            w.result = {"unparsed": out.stdout[-2000:]}
        w.calls = [c.summary() for c in proxy.messages()]
        keys = ("prompt_tokens", "cached_tokens", "prefill_s", "prefill_tps", "output_tokens", "decode_tps",
                "stop_reason")
        w.worker = [{k: e.get(k) for k in keys} for e in t.log_events() if e.get("event") == "generation"]
    finally:
        if proxy is not None:
            proxy.stop()
        t.stop()
        w.leftovers = t.leftovers()
        shutil.rmtree(base, ignore_errors=True)
    return w


# ---------------------------------------------------------------- report


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Plain path: `claude -p \"say hello\"` against a fresh `turnout up` (no config)",
        "",
        f"{doc['date']}, {doc['host']}; command: `{doc['command']}`. Target: under {TARGET_S:.0f} s, a real text "
        "answer, exit code 0.",
        "",
        "| path | run | wall (s) | exit | API calls | prompt tokens | TTFT (s) | worker prefill (s) "
        "| prefill tok/s | output tokens | decode tok/s | stop reason | max_tokens | answer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        c = r["calls"][-1] if r["calls"] else {}
        g = r["worker"][-1] if r["worker"] else {}
        answer = str(r["result"].get("result", "")).replace("|", "\\|").replace("\n", " ")[:60]
        lines.append(
            f"| {r['path']} | {r['run']} | {r['wall_s']} | {r['returncode']} | {len(r['calls'])} "
            f"| {c.get('prompt_tokens', '')} | {c.get('ttft_s', '')} | {g.get('prefill_s', '')} "
            f"| {g.get('prefill_tps', '')} | {c.get('output_tokens', '')} | {g.get('decode_tps', '')} "
            f"| {c.get('stop_reason', '')} | {c.get('max_tokens', '')} | {answer} |")
    limits: dict[str, Any] = next((r["settings_env"] for r in doc["runs"] if r["settings_env"]), {})
    if limits:
        lines += ["", "Limits `turnout claude setup` wrote: " + ", ".join(
            f"`{k}={v}`" for k, v in limits.items() if k.startswith("CLAUDE_CODE_")) + "."]
    lines += ["", "TTFT: at the HTTP level, request to first content block. Worker prefill: from the request "
              "reaching the worker to the prompt evaluated (render, tokenise, prefill); prefill tok/s is the "
              "prompt's tokens over it; decode tok/s is the worker's, output tokens over the time after prefill."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m turnout.bench.plain_path", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="walks of each path (alternating)")
    ap.add_argument("--out", default=str(RESULTS / "plain-path"), help="results path without extension")
    ap.add_argument("--paths", default="by hand,after setup")
    args = ap.parse_args(argv)
    cache = assembled_cache(Path(tempfile.mkdtemp(prefix="plain-path-cache-")))
    runs = []
    try:
        for i in range(args.runs):
            for path in args.paths.split(","):
                w = walk(path, cache)
                d = asdict(w)
                d["run"] = i + 1
                runs.append(d)
                last = w.calls[-1] if w.calls else {}
                print(f"{path} #{i + 1}: {w.wall_s} s, exit {w.returncode}, {len(w.calls)} call(s), "
                      f"TTFT {last.get('ttft_s')} s, {last.get('prefill_tps')} tok/s prefill, "
                      f"stop {last.get('stop_reason')}: {str(w.result.get('result', ''))[:80]!r}", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    doc = {"date": time.strftime("%Y-%m-%d"), "host": f"{platform.machine()}, {os.cpu_count()} cores",
           "command": ".venv/bin/python -m turnout.bench.plain_path " + " ".join(argv if argv is not None else sys.argv[1:]),
           "target_s": TARGET_S, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
