"""The MCP server end to end: the official SDK's client over Streamable HTTP (the
gateway's /mcp, behind the token) and over stdio (`turnout mcp`), the MCP Inspector
CLI, session-scoped and global switching, and every routable name passing Claude
Code's `/model` check."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import FAKE_CONFIG
from tests.helpers import poll_until
from turnout.supervisor.launch import TurnoutProcess

ROOT = Path(__file__).resolve().parents[2]

# Two local models that answer differently: "fake" 12 words, "fake2" 3 words.
# [routing] turns the router on (session overrides live there).
TWO_FAKES = FAKE_CONFIG + """
[[models]]
name = "fake2"
backend = "fake"
aliases = ["second-model"]
[models.options]
reply_tokens = 3

[routing]
default = "fake"
[routing.aliases]
local = "fake"
"""

TOOLS = {"endpoint_list", "endpoint_status", "endpoint_set", "endpoint_recommend", "models_list", "model_load",
         "model_unload", "workers_status", "workers_scale", "system_status", "keys_status", "usage"}


@pytest.fixture(scope="module")
def t(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    tp = TurnoutProcess(TWO_FAKES, workdir=str(tmp_path_factory.mktemp("mcp")))
    tp.start()
    yield tp
    tp.stop()
    assert not tp.leftovers(), tp.leftovers()


def http(t: TurnoutProcess, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         token: bool = True) -> tuple[int, Any]:
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01", **(headers or {})}
    if token:
        h["x-api-key"] = t.token
    req = urllib.request.Request(t.base_url + path, method=method, headers=h,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def chat(t: TurnoutProcess, session: str, text: str, model: str = "claude-sonnet-4-5",
         tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    if tools:
        body["tools"] = tools
    status, out = http(t, "POST", "/v1/messages", body, {"X-Claude-Code-Session-Id": session})
    assert status == 200, out
    return dict(out)


SET_TOOL = {"name": "mcp__turnout__endpoint_set", "description": "switch", "input_schema": {
    "type": "object", "properties": {"target": {"type": "string"}, "scope": {"type": "string"}}}}


async def _with_http(t: TurnoutProcess, fn: Any) -> Any:
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {t.token}"}) as hc:
        async with Client(streamable_http_client(t.base_url + "/mcp", http_client=hc)) as c:
            return await fn(c)


def call(t: TurnoutProcess, name: str, args: dict[str, Any], meta: dict[str, Any] | None = None) -> Any:
    async def go(c: Client) -> Any:
        return await c.call_tool(name, args, meta=meta)  # type: ignore[arg-type]
    return asyncio.run(_with_http(t, go))


def result(r: Any) -> dict[str, Any]:
    assert not r.is_error, r.content[0].text
    return dict(json.loads(r.content[0].text))


def served_by(t: TurnoutProcess, session: str) -> str:
    status, s = http(t, "GET", "/admin/endpoints")
    assert status == 200
    return next(x["endpoint"] for x in s["sessions"] if x["id"] == session)


def test_http_transport_lists_every_tool_with_schemas(t: TurnoutProcess) -> None:
    async def go(c: Client) -> Any:
        return (await c.list_tools()).tools
    tools = {x.name: x for x in asyncio.run(_with_http(t, go))}
    assert TOOLS <= set(tools)
    es = tools["endpoint_set"]
    assert es.input_schema["required"] == ["target"]
    assert es.input_schema["properties"]["scope"]["enum"] == ["session", "global"]
    assert "use my local one" in (es.description or "")


def test_mcp_requires_the_token(t: TurnoutProcess) -> None:
    status, body = http(t, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=False)
    assert status == 401 and "token" in body["error"]["message"]


def test_the_session_that_made_the_tool_call_is_switched_and_no_other(t: TurnoutProcess) -> None:
    """A request of session A gets a tool_use of mcp__turnout__endpoint_set; the MCP
    call carries only its tool_use id (as Claude Code sends it); A's next request
    goes to fake2, B's stays on fake."""
    chat(t, "sess-B", "hello there")
    first = chat(t, "sess-A", '[[tool:mcp__turnout__endpoint_set {"target": "fake2"}]]', tools=[SET_TOOL])
    tu = next(b for b in first["content"] if b["type"] == "tool_use")
    out = result(call(t, "endpoint_set", tu["input"], meta={"claudecode/toolUseId": tu["id"]}))
    assert out["session_id"] == "sess-A" and out["session_found_by"] == "the conversation that called this tool"
    assert out["resolves_to"] == ["fake2"]
    a = chat(t, "sess-A", "one two three four five six seven")
    assert a["usage"]["output_tokens"] == 3 and served_by(t, "sess-A") == "fake2"
    b = chat(t, "sess-B", "one two three four five six seven")
    assert b["usage"]["output_tokens"] == 12 and served_by(t, "sess-B") == "fake"
    # back to the configuration, in words
    out = result(call(t, "endpoint_set", {"target": "default", "session_id": "sess-A"}))
    assert out["target"] is None
    assert chat(t, "sess-A", "x y z")["usage"]["output_tokens"] == 12


def test_fuzzy_names_and_errors_a_model_can_act_on(t: TurnoutProcess) -> None:
    chat(t, "sess-F", "hi")
    assert result(call(t, "endpoint_set", {"target": "use my local one", "session_id": "sess-F"}))["target"] == "fake"
    assert result(call(t, "endpoint_set", {"target": "fake 2", "session_id": "sess-F"}))["target"] == "fake2"
    bad = call(t, "endpoint_set", {"target": "gemini flash", "session_id": "sess-F"})
    assert bad.is_error and "no endpoint matches 'gemini flash'; choices: fake, fake2" in bad.content[0].text


def test_global_scope_moves_new_sessions_until_cleared(t: TurnoutProcess) -> None:
    result(call(t, "endpoint_set", {"target": "second-model", "scope": "global"}))
    try:
        assert chat(t, "sess-G1", "a b c d e f")["usage"]["output_tokens"] == 3
    finally:
        result(call(t, "endpoint_set", {"target": "default", "scope": "global"}))
    assert chat(t, "sess-G2", "a b c d e f")["usage"]["output_tokens"] == 12


def test_status_tools_report_real_measurements(t: TurnoutProcess) -> None:
    chat(t, "sess-U", "count these words please")
    use = result(call(t, "usage", {"session_id": "sess-U"}))
    assert use["sessions"]["sess-U"]["fake"]["output_tokens"] == 12  # the fake cycles words to 12
    assert use["endpoints"]["fake"]["requests"] >= 1
    st = result(call(t, "endpoint_status", {"endpoint": "fake"}))
    assert st["endpoints"][0]["telemetry"]["ttft_ms_p50"] is not None  # local speed measured by the gateway
    sysinfo = result(call(t, "system_status", {}))
    pids = {w["pid"] for w in t.admin_workers()}
    assert pids <= {p["pid"] for p in sysinfo["processes"]}
    assert all(p["rss_mb"] > 1 for p in sysinfo["processes"])
    assert sysinfo["system"]["memory_available_mb"] > 0
    rec = result(call(t, "endpoint_recommend", {"session_id": "sess-U"}))
    assert rec["summary"].startswith("You're at ") and {r["endpoint"] for r in rec["ranked"]} == {"fake", "fake2"}
    keys = result(call(t, "keys_status", {}))
    assert keys["keys"] == []


def test_workers_scale_load_and_unload_through_the_supervisor(t: TurnoutProcess) -> None:
    def workers(model: str) -> list[dict[str, Any]]:
        return [w for w in result(call(t, "workers_status", {}))["workers"] if w["model"] == model]

    assert "scaled to fake2=2" in result(call(t, "workers_scale", {"model": "fake2", "workers": 2}))["summary"]
    from tests.helpers import poll_until
    poll_until(lambda: sum(w["state"] == "ready" for w in workers("fake2")) == 2, timeout=30)
    result(call(t, "workers_scale", {"model": "fake2", "workers": 1}))
    poll_until(lambda: len(workers("fake2")) == 1, timeout=30)
    out = result(call(t, "model_unload", {"model": "fake2"}))
    assert "evicting" in out["summary"]
    poll_until(lambda: not workers("fake2"), timeout=30)
    out = result(call(t, "model_load", {"model": "fake2", "wait_s": 30}))
    assert out["ready"] is True
    bad = call(t, "model_load", {"model": "nope"})
    assert bad.is_error and "no local model 'nope'" in bad.content[0].text


def stdio_params(t: TurnoutProcess) -> StdioServerParameters:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "TURNOUT_URL": t.base_url,
           "TURNOUT_TOKEN": t.token, "CLAUDE_CODE_SESSION_ID": "sess-stdio"}
    return StdioServerParameters(command=sys.executable, args=["-m", "turnout.cli", "mcp"], env=env, cwd=str(ROOT))


def test_stdio_transport_forwards_to_the_gateway(t: TurnoutProcess) -> None:
    chat(t, "sess-stdio", "hello")

    async def go() -> Any:
        async with Client(stdio_params(t)) as c:
            names = {x.name for x in (await c.list_tools()).tools}
            set_ = await c.call_tool("endpoint_set", {"target": "fake2"})
            return names, set_
    names, set_ = asyncio.run(go())
    assert TOOLS <= names
    out = result(set_)
    # the session comes from $CLAUDE_CODE_SESSION_ID, forwarded as a header
    assert out["session_id"] == "sess-stdio" and out["session_found_by"] == "the client's session header"
    assert chat(t, "sess-stdio", "a b c d e")["usage"]["output_tokens"] == 3


def test_stdio_says_how_to_start_turnout_when_it_is_down(t: TurnoutProcess) -> None:
    p = stdio_params(t)
    p.env = {**(p.env or {}), "TURNOUT_URL": "http://127.0.0.1:9"}

    async def go() -> Any:
        async with Client(p) as c:
            return await c.call_tool("usage", {})
    r = asyncio.run(go())
    assert r.is_error and "start it with `turnout up`" in r.content[0].text


@pytest.mark.slow  # the external MCP Inspector CLI
def test_mcp_inspector_cli_lists_the_tools(t: TurnoutProcess) -> None:
    exe = ROOT / ".tools/node_modules/.bin/mcp-inspector"
    if not exe.exists():
        if os.environ.get("CI"):
            pytest.fail("MCP Inspector missing: npm install @modelcontextprotocol/inspector in .tools")
        pytest.skip("MCP Inspector not installed (npm install @modelcontextprotocol/inspector in .tools)")
    # Inspector 0.15's CLI sends no custom header over HTTP, so it runs `turnout mcp`
    # (stdio), which forwards to /mcp with the token.
    out = subprocess.run(
        [str(exe), "--cli", "-e", f"TURNOUT_URL={t.base_url}", "-e", f"TURNOUT_TOKEN={t.token}",
         "-e", f"HOME={os.environ['HOME']}", sys.executable, "-m", "turnout.cli", "mcp", "--method", "tools/list"],
        capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = {x["name"]: x for x in json.loads(out.stdout)["tools"]}
    assert TOOLS <= set(listed)
    assert listed["endpoint_set"]["inputSchema"]["properties"]["target"]["type"] == "string"


def test_every_routable_name_passes_the_model_picker_check(t: TurnoutProcess) -> None:
    """Claude Code's `/model NAME` sends a non-streaming max_tokens: 1 request and
    accepts the name only on 200."""
    status, listing = http(t, "GET", "/v1/models")
    names = [x["id"] for x in listing["data"]]
    assert {"fake", "fake2", "second-model", "local"} <= set(names)
    for name in names:
        status, body = http(t, "POST", "/v1/messages", {"model": name, "max_tokens": 1, "messages": [
            {"role": "user", "content": "hi"}]})
        assert status == 200, (name, body)
        assert body["usage"]["output_tokens"] == 1


def test_switching_needs_no_routing_section(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    """Two local models and no [routing]/[[endpoints]]: a session switch and a global
    switch still take effect (the router reads overrides even when routing is off)."""
    t2 = turnout_factory(TWO_FAKES.split("[routing]")[0])
    chat(t2, "plain-A", "hello")
    assert result(call(t2, "endpoint_set", {"target": "fake2", "session_id": "plain-A"}))["target"] == "fake2"
    assert chat(t2, "plain-A", "a b c d e f")["usage"]["output_tokens"] == 3
    assert chat(t2, "plain-B", "a b c d e f")["usage"]["output_tokens"] == 12
    result(call(t2, "endpoint_set", {"target": "fake2", "scope": "global"}))
    # an exact alias of another model does not escape the global switch
    assert chat(t2, "plain-C", "a b c d e f", model="some-local-model")["usage"]["output_tokens"] == 3


def test_switches_survive_a_gateway_crash_and_a_restart(tmp_path: Path) -> None:
    """A session's switch and the global one are kept (routing.json in the state
    dir): a gateway the supervisor restarts, or a whole `turnout up` again on the
    same port, routes as it was told; clearing is kept too."""
    def gateway_pid(tp: TurnoutProcess) -> int:
        return next(p.pid for p in tp.descendants() if "turnout.gateway.main" in " ".join(p.cmdline()))

    t1 = TurnoutProcess(TWO_FAKES, workdir=str(tmp_path))
    t1.start()
    try:
        chat(t1, "keep-A", "hello")
        result(call(t1, "endpoint_set", {"target": "fake2", "session_id": "keep-A"}))
        result(call(t1, "endpoint_set", {"target": "second-model", "scope": "global"}))
        old = gateway_pid(t1)
        os.kill(old, signal.SIGKILL)
        def back() -> bool:
            try:
                return gateway_pid(t1) != old and t1.healthz()[0] == 200
            except (OSError, StopIteration, psutil.Error):  # the old one going; the new one not up yet
                return False
        poll_until(back, timeout=30, interval=0.1)
        assert chat(t1, "keep-A", "a b c d e f")["usage"]["output_tokens"] == 3
        assert chat(t1, "new-B", "a b c d e f")["usage"]["output_tokens"] == 3  # the global switch
        result(call(t1, "endpoint_set", {"target": "default", "scope": "global"}))
    finally:
        t1.stop()
    t2 = TurnoutProcess(TWO_FAKES, workdir=str(tmp_path))
    t2.port, t2.base_url = t1.port, t1.base_url  # the same instance: state is per port
    t2.start()
    try:
        assert chat(t2, "keep-A", "a b c d e f")["usage"]["output_tokens"] == 3
        assert chat(t2, "new-C", "a b c d e f")["usage"]["output_tokens"] == 12  # global cleared, and kept so
        status, s = http(t2, "GET", "/admin/sessions/keep-A")
        assert status == 200 and s["override"] == "fake2"
    finally:
        t2.stop()


def test_telemetry_and_routing_work_with_mcp_off(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    """``[mcp] enabled = false`` turns off /mcp only: local models are still measured
    (what endpoint_recommend ranks on), usage is still counted, and a session is
    still switched through /admin/sessions."""
    t2 = turnout_factory(TWO_FAKES + "\n[mcp]\nenabled = false\n")
    assert http(t2, "POST", "/mcp", {})[0] == 404
    chat(t2, "off-A", "hello")
    status, s = http(t2, "GET", "/admin/endpoints")
    assert status == 200
    fake = next(x for x in s["local_models"] if x["name"] == "fake")["telemetry"]
    assert fake["requests"] == 1 and fake["ttft_ms_p50"] is not None and fake["tokens_per_s"] is not None
    assert served_by(t2, "off-A") == "fake"
    assert http(t2, "PUT", "/admin/sessions/off-A", {"target": "fake2"})[0] == 200
    assert chat(t2, "off-A", "a b c d e f")["usage"]["output_tokens"] == 3
    assert chat(t2, "off-B", "a b c d e f")["usage"]["output_tokens"] == 12
