"""The real Claude Code CLI (print mode) against turnout serving the real default
model (Gemma 3 270M base, llama.cpp worker) on this CPU.

Claude Code talks to turnout through a small recording proxy in this test, so the
requests it sent and the answers it got are printed (bodies summarised; headers,
which carry the token, are never recorded).

Time: Claude Code's full prompt is ~19.5k Gemma tokens, ~1-3 min of prefill here.
The plain answer runs with every default tool (the real prompt, cold). The tool
round trip offers only Bash (``--tools Bash``, ~4k tokens), and its second turn
reuses the first turn's prefix from the KV cache. The tool call is made by a
base model that cannot choose tools, so the model's ``force_tool = "Bash"`` test
option turns Claude Code's fresh user turn into ``tool_choice: Bash`` (grammar-
constrained JSON against Bash's schema); the turn after the tool result is free.
Both configure ``stop = ["\\n", "."]``: a base model does not end its turns by itself.
``--allowedTools "Bash(echo:*)"`` lets Claude Code run only an ``echo`` the model
may write: anything else comes back as a permission-denied tool result, which
completes the round trip just the same without running model-written commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from tests.helpers import claude_bin
from turnout.supervisor.launch import TurnoutProcess, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CONFIG = """
[server]
worker_wait_s = 60.0

[[models]]
name = "gemma3-270m"
backend = "llama_cpp"
aliases = ["claude-*"]
[models.options]
seed = 1
# Base-model loops ("RightarrowRightarrow...") would run a forced call's string
# to max_tokens, leaving unclosed JSON (returned as text, not a tool_use).
repeat_penalty = 1.3
# A base model never ends its turn: let a newline or a full stop end it, or every
# answer runs to max_tokens and Claude Code gives up after three "resume" requests.
# (A grammar-forced tool call is not cut by these.)
stop = ["\\n", "."]
"""
FORCED_CONFIG = CONFIG + 'force_tool = "Bash"\n'


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default model assembled once for the module (turnout would do it on
    start, into each test's own empty cache)."""
    from turnout.workers import models

    cache = tmp_path_factory.mktemp("turnout-cache")
    old = os.environ.get("TURNOUT_CACHE_DIR")
    os.environ["TURNOUT_CACHE_DIR"] = str(cache)
    try:
        models.ensure_default_model(progress=False)
    finally:
        if old is None:
            os.environ.pop("TURNOUT_CACHE_DIR", None)
        else:
            os.environ["TURNOUT_CACHE_DIR"] = old
    yield str(cache)


# ---------------------------------------------------------------- recording proxy


@dataclass
class Exchange:
    method: str
    path: str
    body: Any
    status: int = 0
    response: bytes = b""
    seconds: float = 0.0

    def events(self) -> list[tuple[str, Any]]:
        """The SSE events of a streamed answer (or one ("json", body))."""
        text = self.response.decode(errors="replace")
        if not text.startswith("event:"):
            try:
                return [("json", json.loads(text))]
            except ValueError:
                return []
        out = []
        for raw in text.split("\n\n"):
            ev = data = ""
            for line in raw.splitlines():
                if line.startswith("event: "):
                    ev = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
            if ev:
                out.append((ev, json.loads(data) if data else None))
        return out

    def answer(self) -> dict[str, Any]:
        """The streamed answer reassembled: blocks, stop reason, usage."""
        blocks: list[dict[str, Any]] = []
        result: dict[str, Any] = {"blocks": blocks}
        for ev, d in self.events():
            if ev == "json":
                return {"blocks": d.get("content", []), "stop_reason": d.get("stop_reason"), "usage": d.get("usage")}
            if ev == "message_start":
                result["start_usage"] = d["message"]["usage"]
            elif ev == "content_block_start":
                blocks.append(dict(d["content_block"], partial=""))
            elif ev == "content_block_delta":
                delta = d["delta"]
                b = blocks[-1]
                for key in ("text", "thinking", "partial_json", "signature"):
                    if key in delta:
                        b["partial" if key == "partial_json" else key] = b.get(
                            "partial" if key == "partial_json" else key, "") + delta[key]
            elif ev == "message_delta":
                result["stop_reason"] = d["delta"]["stop_reason"]
                result["usage"] = d["usage"]
            elif ev == "error":
                result["error"] = d
        for b in blocks:
            if b["type"] == "tool_use":
                b["input"] = json.loads(b["partial"] or "{}")
            b.pop("partial", None)
        result["pings"] = sum(ev == "ping" for ev, _ in self.events())
        return result

    def summary(self) -> str:
        b = self.body if isinstance(self.body, dict) else {}
        msgs = b.get("messages", [])
        last = msgs[-1] if msgs else {}
        content = last.get("content")
        if isinstance(content, list):
            content = [{k: (str(v)[:200]) for k, v in part.items() if k != "cache_control"} for part in content]
        req = {
            "model": b.get("model"), "max_tokens": b.get("max_tokens"), "stream": b.get("stream"),
            "tools": [t.get("name") for t in b.get("tools", [])], "tool_choice": b.get("tool_choice"),
            "thinking": b.get("thinking"), "system_blocks": [len(s.get("text", "")) for s in b.get("system", [])],
            "messages": [m.get("role") for m in msgs], "last_message": {"role": last.get("role"), "content": content},
        }
        return (f"--> {self.method} {self.path} {json.dumps(req, ensure_ascii=False)}\n"
                f"<-- {self.status} in {self.seconds:.1f}s {json.dumps(self.answer(), ensure_ascii=False)}")


@dataclass
class Recorder:
    """A reverse proxy that records every exchange between Claude Code and turnout."""

    upstream: str
    port: int = field(default_factory=free_port)
    exchanges: list[Exchange] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw[:200]
        ex = Exchange(request.method, request.path_qs, body)
        self.exchanges.append(ex)
        t0 = time.monotonic()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=raw,
                                         headers=headers) as up:
            ex.status = up.status
            resp = web.StreamResponse(status=up.status)
            if "Content-Type" in up.headers:
                resp.content_type = up.headers["Content-Type"].split(";")[0]
            await resp.prepare(request)
            chunks = []
            async for chunk in up.content.iter_any():
                chunks.append(chunk)
                await resp.write(chunk)
            ex.response = b"".join(chunks)
            await resp.write_eof()
        ex.seconds = time.monotonic() - t0
        return resp

    def start(self) -> Recorder:
        ready = threading.Event()

        async def serve() -> None:
            self._session = ClientSession(timeout=ClientTimeout(total=None, sock_read=900))
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()
            await self._runner.cleanup()
            await self._session.close()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(serve(),), daemon=True)
        self._thread.start()
        assert ready.wait(10), "recording proxy did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def messages(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.path.startswith("/v1/messages")
                and "count_tokens" not in e.path]


def run_claude(t: TurnoutProcess, home: Path, *args: str, timeout: float, **env: str) -> tuple[dict[str, Any], Recorder]:
    rec = Recorder(t.base_url).start()
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    full_env = {
        "PATH": os.environ["PATH"], "HOME": str(home),
        "ANTHROPIC_BASE_URL": rec.url, "ANTHROPIC_AUTH_TOKEN": t.token,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        # A base model writes until it hits the limit: keep each answer short.
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "128", **env,
    }
    t0 = time.monotonic()
    try:
        out = subprocess.run([claude_bin(), "-p", *args, "--output-format", "json"], cwd=work, env=full_env,
                             capture_output=True, text=True, timeout=timeout)
    finally:
        rec.stop()
        print(f"\n=== claude -p {' '.join(args)}  ({time.monotonic() - t0:.0f} s)")
        for ex in rec.exchanges:
            print(ex.summary())
    print("claude stdout:", out.stdout[-3000:], "\nclaude stderr:", out.stderr[-2000:])
    assert out.returncode == 0, out.stderr or out.stdout
    return json.loads(out.stdout), rec


def test_print_mode_answers_with_the_default_model(
        tmp_path: Path, model_cache: str, turnout_factory: Callable[..., TurnoutProcess]) -> None:
    t = turnout_factory(CONFIG, env={"TURNOUT_CACHE_DIR": model_cache})
    res, rec = run_claude(t, tmp_path / "home", "Say hello in one short sentence.", timeout=330)
    assert res["is_error"] is False, res
    assert res["num_turns"] == 1
    (ex,) = rec.messages()
    assert len(ex.body["tools"]) >= 15  # Claude Code's real prompt, every default tool
    answer = ex.answer()
    assert "error" not in answer and answer["stop_reason"] in ("end_turn", "max_tokens"), answer
    # counted by Gemma's tokenizer: the whole prompt was prefilled (~4k tokens: a base
    # model gets the tools a line each, tool_detail "brief")
    assert answer["start_usage"]["input_tokens"] > 3000
    assert answer["pings"] > 0  # pings kept the stream alive during the prefill
    # what Claude Code printed is what the model wrote
    assert res["result"].strip() == "".join(b.get("text", "") for b in answer["blocks"] if b["type"] == "text").strip()


def test_tool_round_trip_with_the_default_model(
        tmp_path: Path, model_cache: str, turnout_factory: Callable[..., TurnoutProcess]) -> None:
    t = turnout_factory(FORCED_CONFIG, env={"TURNOUT_CACHE_DIR": model_cache})
    res, rec = run_claude(t, tmp_path / "home", "Run this exact shell command: echo turnout-e2e-ok",
                          "--tools", "Bash", "--allowedTools", "Bash(echo:*)", "--max-turns", "6",
                          timeout=300, CLAUDE_CODE_MAX_OUTPUT_TOKENS="256")
    first, second = rec.messages()[:2]
    assert [tool["name"] for tool in first.body["tools"]] == ["Bash"]
    a1 = first.answer()
    assert a1["stop_reason"] == "tool_use", a1
    (call,) = [b for b in a1["blocks"] if b["type"] == "tool_use"]
    assert call["name"] == "Bash" and isinstance(call["input"]["command"], str)  # valid against the schema
    # Claude Code ran it (or refused it) and sent the result back.
    results = [p for msg in second.body["messages"] if msg["role"] == "user" and isinstance(msg["content"], list)
               for p in msg["content"] if p.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [call["id"]]
    a2 = second.answer()
    # The second answer is the model's own (the forcing applies to the user's text
    # only), and the prompt differs from run to run (Claude Code's date, the temp
    # dir), so a sampled answer may call Bash again: any of these is a right answer,
    # and a call is as valid as the first.
    assert a2["stop_reason"] in ("end_turn", "max_tokens", "tool_use"), a2
    for b in a2["blocks"]:
        if b["type"] == "tool_use":
            assert b["name"] == "Bash" and isinstance(b["input"]["command"], str), a2
    # the second turn reused the first turn's prefix from the KV cache
    start2 = a2["start_usage"]
    assert start2["cache_read_input_tokens"] >= a1["start_usage"]["input_tokens"] - 1, (a1, a2)
    assert res["is_error"] is False and res["num_turns"] >= 2, res
    if a2["stop_reason"] != "tool_use":
        assert res["num_turns"] == 2, res


def test_supervisor_with_the_default_model_answers_and_stops_on_sigterm(model_cache: str, tmp_path: Path) -> None:
    """The supervisor sizes the default model (a 262k-token vocabulary) for admission
    and status on its main loop: that must not hold up `turnout ps` or SIGTERM
    (it once parsed the whole GGUF each time, 19 s)."""
    t = TurnoutProcess(CONFIG, workdir=str(tmp_path), env={"TURNOUT_CACHE_DIR": model_cache}).start(timeout=180)
    code = -1
    try:
        for _ in range(3):
            r = subprocess.run([sys.executable, "-m", "turnout.cli", "ps", "--json", "--runtime-dir", str(t.runtime_dir)],
                               env=t.env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            models = json.loads(r.stdout)["models"]
            models = [x for x in models if x["backend"] != "browser"]  # the browser tools' worker, on demand
            assert [x["name"] for x in models] == ["gemma3-270m"] and models[0]["expected_mb"] > 250
        status, body = t.healthz()
        assert status == 200 and body["workers_ready"] == 1
    finally:
        code = t.stop(timeout=10)  # killed (not 0) if SIGTERM is not acted on in time
    assert code == 0 and t.leftovers() == []
