"""The ``anthropic`` and ``openai`` SDKs against a real turnout routed to local
servers that speak the Anthropic, OpenAI and Gemini wire formats: streaming, tool
calls, a conversation switching provider mid-way, retries, fallback, key errors,
cancellation, and no key anywhere in what turnout says or logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
import urllib3

from tests.helpers import poll_until
from tests.upstreams.fake import ANTHROPIC_SIG, GEMINI_SIG, FakeUpstreams
from turnout.supervisor.launch import TurnoutProcess

SEEN: list[str] = []  # every response body the tests got, for the key grep at the end
BAD_KEY = "sk-test-SECRET-wrong-key-77777777"

CONFIG = """
[server]
worker_wait_s = 10.0

[[models]]
name = "fake"
backend = "fake"
[models.options]
reply_tokens = 6

[[endpoints]]
name = "oai"
provider = "openai"
base_url = "{url}/openai/v1"
[[endpoints.models]]
name = "gpt-test"
context_window = 128000
input_price = 2.0
output_price = 8.0

[[endpoints]]
name = "gem"
provider = "gemini"
base_url = "{url}/gemini"
[[endpoints.models]]
name = "gemini-test"
context_window = 1000000

[[endpoints]]
name = "ant"
provider = "anthropic"
base_url = "{url}/anthropic"
[[endpoints.models]]
name = "claude-test"
context_window = 200000

[[endpoints]]
name = "bad"
provider = "openai"
base_url = "{url}/openai/v1"
key = "badkey"

[[endpoints]]
name = "oaihost"  # the same upstream by host name: cookie jars take no cookies from IP addresses
provider = "openai"
base_url = "{host_url}/openai/v1"
key = "oai"
[[endpoints.models]]
name = "gpt-test"

[[endpoints]]
name = "down"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
key = "oai"

[routing]
retries = 1
backoff_s = 0.01
[routing.aliases]
sonnet = "ant/claude-test"
opus = ["down/gpt-x", "oai/gpt-test"]
haiku = "gem/gemini-test"
flaky = ["gem/gemini-test", "oai/gpt-test"]
"""

TOOLS = [{"name": "Bash", "description": "run a command", "input_schema": {
    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
    "properties": {"command": {"type": "string", "format": "uri-reference"},
                   "timeout": {"type": ["integer", "null"], "exclusiveMinimum": 0}},
    "required": ["command"]}}]


@pytest.fixture(scope="module")
def cloud(upstreams: FakeUpstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    home = tmp_path_factory.mktemp("cloudhome")
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "TURNOUT_LOG_LEVEL": "debug"}
    import os

    full = {**os.environ, **env}
    for name, key in (("oai", upstreams.keys["openai"]), ("gem", upstreams.keys["gemini"]),
                      ("ant", upstreams.keys["anthropic"]), ("badkey", BAD_KEY)):
        r = subprocess.run([sys.executable, "-m", "turnout.cli", "keys", "set", name], input=key + "\n",
                           capture_output=True, text=True, env=full, timeout=60)
        assert r.returncode == 0, r.stderr
        SEEN.append(r.stdout + r.stderr)
    r = subprocess.run([sys.executable, "-m", "turnout.cli", "keys", "list"], capture_output=True, text=True,
                       env=full, timeout=60)
    assert "oai" in r.stdout and "…" in r.stdout
    SEEN.append(r.stdout + r.stderr)
    t = TurnoutProcess(CONFIG.format(url=upstreams.url, host_url=upstreams.url.replace("127.0.0.1", "localhost")), env=env, workdir=str(tmp_path_factory.mktemp("cloud")))
    t.start()
    yield t
    t.stop()


def client(t: TurnoutProcess, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0, **kw)


def _stream(t: TurnoutProcess, **kw: Any) -> Any:
    with client(t).messages.stream(max_tokens=200, **kw) as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_message()
    SEEN.append(final.model_dump_json())
    return final, kinds


PROVIDER_OF = {"oai/gpt-test": "openai", "gem/gemini-test": "gemini", "ant/claude-test": "anthropic"}


@pytest.mark.parametrize("model", list(PROVIDER_OF))
def test_streamed_text_from_each_provider(cloud: TurnoutProcess, model: str) -> None:
    final, kinds = _stream(cloud, model=model, messages=[{"role": "user", "content": "hello there"}])
    assert final.content[0].text == f"{PROVIDER_OF[model]} heard: hello there"
    assert final.stop_reason == "end_turn" and final.model == model
    assert kinds.count("text") >= 4  # arrived as deltas, not at once
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", list(PROVIDER_OF))
def test_tool_call_round_trip(cloud: TurnoutProcess, upstreams: FakeUpstreams, model: str) -> None:
    prompt = 'do it [[tool:Bash {"command": "ls -la /tmp"}]]'
    final, kinds = _stream(cloud, model=model, tools=TOOLS, messages=[{"role": "user", "content": prompt}])
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "Bash" and call.input == {"command": "ls -la /tmp"}
    if PROVIDER_OF[model] != "gemini":
        assert "input_json" in kinds
    follow = client(cloud).messages.create(model=model, max_tokens=100, tools=TOOLS, messages=[  # type: ignore[arg-type]
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "file-a file-b"}]},
    ])
    SEEN.append(follow.model_dump_json())
    assert "file-a file-b" in follow.content[0].text
    if PROVIDER_OF[model] == "gemini":
        sent = upstreams.requests[-1].body
        fr = sent["contents"][-1]["parts"][0]["functionResponse"]
        assert fr["name"] == "Bash" and fr["response"] == {"result": "file-a file-b"}
        # The tool schema reached Gemini without the keywords it rejects.
        params = sent["tools"][0]["functionDeclarations"][0]["parameters"]
        assert "$schema" not in params and "additionalProperties" not in params
        assert params["properties"]["timeout"] == {"type": "integer", "nullable": True}


def test_conversation_switches_provider_mid_way(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    """Claude Code's session: Anthropic thinks and calls a tool, then the session is
    switched to Gemini (override, as the MCP tool does), then to OpenAI."""
    sid = "4b1c7a0e-session-switch"
    h = {"X-Claude-Code-Session-Id": sid}
    c = client(cloud)
    prompt = '[[think]] look [[tool:Bash {"command": "pwd"}]]'
    history: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=2048, tools=TOOLS, extra_headers=h,  # type: ignore[arg-type]
                           thinking={"type": "enabled", "budget_tokens": 1024}, messages=history) as s:
        first = s.get_final_message()
    assert first.content[0].type == "thinking" and first.content[0].signature == ANTHROPIC_SIG
    assert upstreams.requests[-1].provider == "anthropic"
    call = first.content[-1]
    history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "/home/dev"}]}]

    r = urllib3.request("PUT", f"{cloud.base_url}/admin/sessions/{sid}", body=json.dumps({"target": "haiku"}),
                        headers={"x-api-key": cloud.token})
    assert r.status == 200, r.data
    assert r.json()["resolves_to"] == ["gem/gemini-test"]
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=2048, tools=TOOLS, extra_headers=h,  # type: ignore[arg-type]
                           thinking={"type": "enabled", "budget_tokens": 1024},
                           messages=[*history[:-1], {"role": "user", "content": [
                               {"type": "tool_result", "tool_use_id": call.id, "content": "/home/dev"},
                               {"type": "text", "text": 'again [[tool:Bash {"command": "id"}]]'}]}]) as s:
        second = s.get_final_message()
    SEEN.append(second.model_dump_json())
    g = upstreams.requests[-1]
    assert g.provider == "gemini"
    model_turn = g.body["contents"][1]
    assert model_turn["role"] == "model"
    assert all(not p.get("thought") for p in model_turn["parts"])  # Anthropic's thinking did not travel
    assert ANTHROPIC_SIG not in json.dumps(g.body)
    fc = next(p for p in model_turn["parts"] if "functionCall" in p)
    assert fc["thoughtSignature"] == "skip_thought_signature_validator"  # a call Gemini did not make
    assert second.stop_reason == "tool_use"
    sig_block = next(b for b in second.content if b.type == "thinking")
    assert sig_block.signature.startswith("turnout:gemini:")
    call2 = second.content[-1]
    history = [*history[:-1], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.id, "content": "/home/dev"},
        {"type": "text", "text": 'again [[tool:Bash {"command": "id"}]]'}]},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in second.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call2.id, "content": "uid=1000"}]}]

    # Back to Gemini once more: its own signature goes back on its function call.
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=2048, tools=TOOLS, extra_headers=h,  # type: ignore[arg-type]
                           thinking={"type": "enabled", "budget_tokens": 1024}, messages=history) as s:
        third = s.get_final_message()
    assert "uid=1000" in third.content[-1].text
    parts = upstreams.requests[-1].body["contents"][3]["parts"]
    assert next(p for p in parts if "functionCall" in p)["thoughtSignature"] == GEMINI_SIG

    # Then OpenAI: no thinking, every tool call answered, ids intact.
    urllib3.request("PUT", f"{cloud.base_url}/admin/sessions/{sid}", body=json.dumps({"target": "oai/gpt-test"}),
                    headers={"x-api-key": cloud.token})
    fourth = c.messages.create(model="claude-sonnet-4-6", max_tokens=100, tools=TOOLS, extra_headers=h,  # type: ignore[arg-type]
                               messages=history)
    SEEN.append(fourth.model_dump_json())
    o = upstreams.requests[-1]
    assert o.provider == "openai" and fourth.content[0].text == 'openai heard: "uid=1000"'.replace('"', "")
    roles = [msg["role"] for msg in o.body["messages"]]
    assert roles == ["user", "assistant", "tool", "user", "assistant", "tool"]
    assert o.body["messages"][2]["tool_call_id"] == call.id
    assert "reasoning_content" not in json.dumps(o.body)

    # And back to Anthropic: Gemini's signature is dropped, Anthropic's own kept.
    urllib3.request("DELETE", f"{cloud.base_url}/admin/sessions/{sid}", headers={"x-api-key": cloud.token})
    fifth = c.messages.create(model="claude-sonnet-4-6", max_tokens=2048, tools=TOOLS, extra_headers=h,  # type: ignore[arg-type]
                              thinking={"type": "enabled", "budget_tokens": 1024}, messages=history)
    assert fifth.content[-1].text.startswith("anthropic heard:")
    a = upstreams.requests[-1]
    assert a.provider == "anthropic" and "turnout:gemini" not in json.dumps(a.body)
    assert ANTHROPIC_SIG in json.dumps(a.body)
    info = poll_until(lambda: next((s for s in _admin(cloud)["sessions"] if s["id"] == sid), None))
    assert info["tokens"] > 0 and info["endpoint"] == "ant/claude-test"


def test_anthropic_passthrough_keeps_body_and_betas(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    c = client(cloud)
    c.messages.create(model="ant/claude-test", max_tokens=50, extra_headers={"anthropic-beta": "context-1m-2025-08-07,interleaved-thinking-2025-05-14"},
                      system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
                      messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}],
                      extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015"}]}})
    a = upstreams.requests[-1]
    assert a.body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert a.body["context_management"] == {"edits": [{"type": "clear_thinking_20251015"}]}
    assert a.body["model"] == "claude-test" and a.body["stream"] is True
    assert a.headers["anthropic-beta"] == "context-1m-2025-08-07,interleaved-thinking-2025-05-14"
    assert a.headers["anthropic-version"] == "2023-06-01"
    # Betas never go to another provider.
    c.messages.create(model="oai/gpt-test", max_tokens=50, extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
                      messages=[{"role": "user", "content": "hi"}])
    assert "anthropic-beta" not in upstreams.requests[-1].headers


SEARCH_TOOL = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}]
SEARCH_KINDS = ["redacted_thinking", "server_tool_use", "web_search_tool_result", "text", "text"]


def _check_search_answer(content: list[Any]) -> None:
    assert [b.type for b in content] == SEARCH_KINDS
    assert content[0].data.startswith("EmwKAhgB")
    assert content[1].id == "srvtoolu_01FakeWebSearch" and content[1].input == {"query": "turnout news"}
    assert content[2].content[0].url == FakeUpstreams.SEARCH_URL and content[2].tool_use_id == content[1].id
    assert content[3].text == "Turnout shipped a gateway."
    assert [c.cited_text for c in content[3].citations] == ["turnout shipped a gateway"]


def test_anthropic_answer_reaches_an_anthropic_client_byte_for_byte(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    """Server tools, their results, citations and redacted thinking: blocks turnout
    has no model of come through, streamed and not, and go back upstream as sent."""
    body = json.dumps({"model": "ant/claude-test", "max_tokens": 200, "stream": True, "tools": SEARCH_TOOL,
                       "messages": [{"role": "user", "content": "[[search]] what is new"}]}).encode()
    r = urllib3.request("POST", cloud.base_url + "/v1/messages", body=body, headers={
        "x-api-key": cloud.token, "content-type": "application/json", "anthropic-version": "2023-06-01"})
    assert r.status == 200
    sent = upstreams.last_sse["anthropic"]
    rest = sent.split(b"\n\n", 1)[1]
    assert r.data.endswith(rest), "every event after message_start as the upstream sent it"
    assert json.loads(r.data.split(b"\n\n", 1)[0].split(b"data: ", 1)[1])["message"]["model"] == "ant/claude-test"
    SEEN.append(r.data.decode())

    final, _ = _stream(cloud, model="ant/claude-test", tools=SEARCH_TOOL,
                           messages=[{"role": "user", "content": "[[search]] what is new"}])
    _check_search_answer(final.content)
    assert final.usage.server_tool_use is not None and final.usage.server_tool_use.web_search_requests == 1
    whole = client(cloud).messages.create(model="ant/claude-test", max_tokens=200, tools=SEARCH_TOOL,  # type: ignore[list-item]
                                          messages=[{"role": "user", "content": "[[search]] what is new"}])
    _check_search_answer(whole.content)
    assert whole.model == "ant/claude-test" and whole.usage.server_tool_use.web_search_requests == 1  # type: ignore[union-attr]
    SEEN.append(whole.model_dump_json())

    # The next turn carries those blocks back: to Anthropic as sent; to OpenAI,
    # Gemini and a local model without them (each would refuse or misread them).
    history = [{"role": "user", "content": "[[search]] what is new"},
               {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in whole.content]},
               {"role": "user", "content": "thanks"}]
    client(cloud).messages.create(model="ant/claude-test", max_tokens=50, tools=SEARCH_TOOL, messages=history)  # type: ignore[arg-type,list-item]
    a = upstreams.requests[-1]
    assert a.provider == "anthropic" and a.body["messages"][1]["content"] == history[1]["content"]
    for model, provider in (("oai/gpt-test", "openai"), ("gem/gemini-test", "gemini"), ("fake", None)):
        msg = client(cloud).messages.create(model=model, max_tokens=50, messages=history)  # type: ignore[arg-type]
        assert msg.content[-1].type == "text", model
        if provider:
            up = upstreams.requests[-1]
            assert up.provider == provider and "srvtoolu_" not in json.dumps(up.body) and "EmwKAhgB" not in json.dumps(up.body)
    n = client(cloud).messages.count_tokens(model="ant/claude-test", messages=history)  # type: ignore[arg-type]
    assert n.input_tokens > 0


def test_count_tokens_asks_the_upstream_that_can_count(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    c = client(cloud)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "count me " * 50, "cache_control": {"type": "ephemeral"}}]}]
    for model, provider in (("ant/claude-test", "anthropic"), ("gem/gemini-test", "gemini")):
        n = c.messages.count_tokens(model=model, messages=msgs, system="be brief",  # type: ignore[arg-type]
                                    thinking={"type": "enabled", "budget_tokens": 1024})
        up = upstreams.requests[-1]
        assert up.provider == provider and up.path.endswith(("/count_tokens", ":countTokens")), up.path
        assert n.input_tokens == FakeUpstreams.count_of(provider, up.body)
    assert upstreams.requests[-2].body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    # OpenAI has no counting call: an estimate, and no request upstream.
    before = len(upstreams.requests)
    n = c.messages.count_tokens(model="oai/gpt-test", messages=msgs)  # type: ignore[arg-type]
    assert n.input_tokens > 100 and len(upstreams.requests) == before


def test_a_block_type_that_is_no_server_tool_is_still_a_400(cloud: TurnoutProcess) -> None:
    with pytest.raises(anthropic.BadRequestError) as ei:
        client(cloud).messages.create(model="ant/claude-test", max_tokens=5, messages=[  # type: ignore[list-item]
            {"role": "user", "content": [{"type": "web_search_tool_result", "tool_use_id": "srvtoolu_x", "content": []},
                                         {"type": "txt", "text": "typo"}]}])
    assert ei.value.body["error"]["message"].startswith("messages.0.content.1")  # type: ignore[index]


def test_openai_client_to_gemini_and_anthropic(cloud: TurnoutProcess) -> None:
    oc = openai.OpenAI(base_url=cloud.base_url + "/v1", api_key=cloud.token, max_retries=0)
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                               "parameters": t["input_schema"]}} for t in TOOLS]
    for model, who in (("gem/gemini-test", "gemini"), ("ant/claude-test", "anthropic")):
        stream = oc.chat.completions.create(model=model, stream=True, tools=tools,  # type: ignore[arg-type]
                                            messages=[{"role": "user", "content": 'x [[tool:Bash {"command": "w"}]]'}])
        text, args, finish = "", "", None
        for ch in stream:
            d = ch.choices[0].delta if ch.choices else None
            if d and d.content:
                text += d.content
            if d and d.tool_calls:
                args += d.tool_calls[0].function.arguments or ""  # type: ignore[union-attr]
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
        SEEN.append(text + args)
        assert text.startswith(f"{who} heard:") and json.loads(args) == {"command": "w"} and finish == "tool_calls"
    r = oc.chat.completions.create(model="gem/gemini-test", messages=[{"role": "user", "content": "plain"}])
    assert r.choices[0].message.content == "gemini heard: plain"


def test_fallback_on_connection_error_and_retry_on_429(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    msg = client(cloud).messages.create(model="claude-opus-4-6", max_tokens=50, messages=[{"role": "user", "content": "fb"}])
    assert msg.content[0].text == "openai heard: fb"  # "down" refused the connection
    upstreams.fail_next["openai"] = [429]
    n = len(upstreams.requests)
    msg = client(cloud).messages.create(model="oai/gpt-test", max_tokens=50, messages=[{"role": "user", "content": "again"}])
    assert msg.content[0].text == "openai heard: again"
    assert len(upstreams.requests) == n + 2  # the 429, then the retry
    upstreams.fail_next["gemini"] = [503, 503]
    msg = client(cloud).messages.create(model="flaky", max_tokens=50, messages=[{"role": "user", "content": "fall"}])
    assert msg.content[0].text == "openai heard: fall"
    assert [r.provider for r in upstreams.requests[-3:]] == ["gemini", "gemini", "openai"]


def test_rate_limit_without_fallback_is_429_with_retry_after(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    upstreams.fail_next["anthropic"] = [429, 429]
    r = urllib3.request("POST", cloud.base_url + "/v1/messages", headers={"x-api-key": cloud.token, "content-type": "application/json"},
                        body=json.dumps({"model": "ant/claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
    SEEN.append(r.data.decode())
    assert r.status == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in r.headers and "anthropic endpoint 'ant'" in r.json()["error"]["message"]


def test_upstream_401_names_the_provider_and_the_command(cloud: TurnoutProcess) -> None:
    with pytest.raises(anthropic.BadRequestError) as ei:
        client(cloud).messages.create(model="bad/gpt-test", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    body = json.dumps(ei.value.body)
    SEEN.append(body)
    assert "openai endpoint 'bad'" in body and "turnout keys set badkey" in body
    assert "SECRET" not in body


def test_client_disconnect_closes_the_upstream_request(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    for model, who in (("oai/gpt-test", "openai"), ("gem/gemini-test", "gemini"), ("ant/claude-test", "anthropic")):
        before = len([d for d in upstreams.disconnects if d[0] == who])
        with client(cloud).messages.stream(model=model, max_tokens=500, messages=[{"role": "user", "content": "[[slow]]"}]) as s:
            n = 0
            for ev in s:
                n += ev.type == "text"
                if n >= 3:
                    break
            t_close = time.monotonic_ns()
        # Leaving the block closes the client's connection; the upstream must see
        # its own request end long before its 200 tokens x 10 ms are out.
        poll_until(lambda who=who, before=before: len([d for d in upstreams.disconnects if d[0] == who]) > before,
                   timeout=1.5)
        t_seen = [d for d in upstreams.disconnects if d[0] == who][-1][1]
        assert (t_seen - t_close) / 1e6 < 500


def _admin(t: TurnoutProcess) -> dict[str, Any]:
    r = urllib3.request("GET", t.base_url + "/admin/endpoints", headers={"x-api-key": t.token})
    SEEN.append(r.data.decode())
    assert r.status == 200
    return dict(r.json())


def test_admin_endpoints_reports_telemetry_not_keys(cloud: TurnoutProcess) -> None:
    data = _admin(cloud)
    eps = {e["name"]: e for e in data["endpoints"]}
    assert eps["oai"]["key_set"] and eps["gem"]["key_set"] and eps["ant"]["key_set"]
    assert eps["oai"]["models"][0]["input_price"] == 2.0 and eps["gem"]["context_window"] == 1000000
    tel = eps["oai"]["telemetry"]
    assert tel["requests"] >= 3 and tel["ttft_ms_p50"] is not None and tel["tokens_per_s"] is not None
    assert eps["down"]["telemetry"]["error_rate"] == 1.0
    assert data["routing"]["aliases"]["sonnet"] == "ant/claude-test"


def test_upstream_cookies_are_not_carried_into_later_requests(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    # The fake OpenAI sets a Cloudflare-style cookie on every answer, as the real one does.
    for _ in range(2):
        _stream(cloud, model="oaihost/gpt-test", messages=[{"role": "user", "content": "cookie?"}])
    sent = [r.headers for r in upstreams.requests if r.provider == "openai" and r.headers.get("host", "").startswith("localhost")]
    assert len(sent) >= 2 and not any("cookie" in h for h in sent)


def test_zz_no_key_in_any_log_line_or_response(cloud: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    """Runs last in this module: everything the suite's cloud tests got back, and
    every line turnout logged (at debug level), searched for every test key."""
    _admin(cloud)
    secrets = [*upstreams.keys.values(), BAD_KEY]
    log = cloud.log_text()
    assert "upstream_done" in log and "fallback" in log  # the log did record the cloud traffic
    assert len(SEEN) > 20
    for s in secrets:
        assert s not in log, "a key is in turnout's log"
        for i, text in enumerate(SEEN):
            assert s not in text, f"a key is in response {i}"
    # The upstreams did get them: the grep above could have found them.
    assert any(r.auth_ok for r in upstreams.requests)
