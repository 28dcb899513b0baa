"""The official ``anthropic`` SDK against a real turnout with the fake backend."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import pytest
import urllib3

from tests.helpers import FIXTURES
from turnout.supervisor.launch import TurnoutProcess


def client(t: TurnoutProcess, **kw: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0, **kw)  # type: ignore[arg-type]


def expected_text(prompt: str, n: int) -> str:
    words = prompt.split()
    return " ".join(words[i % len(words)] for i in range(n))


def test_non_streaming_answer(turnout: TurnoutProcess) -> None:
    msg = client(turnout).messages.create(
        model="fake", max_tokens=7, messages=[{"role": "user", "content": "alpha beta gamma"}]
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == expected_text("alpha beta gamma", 7)
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.input_tokens == 3 and msg.usage.output_tokens == 7
    assert msg.id.startswith("msg_") and msg.model == "fake" and msg.role == "assistant"


def test_reply_shorter_than_max_tokens_ends_turn(turnout: TurnoutProcess) -> None:
    msg = client(turnout).messages.create(
        model="fake", max_tokens=1000, messages=[{"role": "user", "content": "one two"}]
    )
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 12  # reply_tokens in the test config


def test_streaming_text_and_event_grammar(turnout: TurnoutProcess) -> None:
    events = []
    with client(turnout).messages.stream(
        model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "red green"}]
    ) as stream:
        for ev in stream:
            events.append(ev.type)
        final = stream.get_final_message()
    assert final.content[0].text == "red green red green red"
    raw = [e for e in events if e in {"message_start", "content_block_start", "content_block_delta",
                                       "content_block_stop", "message_delta", "message_stop"}]
    assert raw[0] == "message_start" and raw[1] == "content_block_start"
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert raw.count("content_block_delta") == 5
    assert final.model == "claude-sonnet-4-6"  # the name the client asked for
    assert final.usage.output_tokens == 5


def test_tool_use_streamed_and_not(turnout: TurnoutProcess) -> None:
    tools = [{"name": "Bash", "description": "run a command",
              "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}]
    prompt = 'please [[tool:Bash {"command": "echo hi && ls -la /tmp"}]]'
    c = client(turnout)
    msg = c.messages.create(model="fake", max_tokens=100, tools=tools, messages=[{"role": "user", "content": prompt}])  # type: ignore[arg-type]
    assert msg.stop_reason == "tool_use"
    block = msg.content[-1]
    assert block.type == "tool_use" and block.name == "Bash"
    assert block.input == {"command": "echo hi && ls -la /tmp"}
    with c.messages.stream(model="fake", max_tokens=100, tools=tools, messages=[{"role": "user", "content": prompt}]) as s:  # type: ignore[arg-type]
        kinds = [ev.type for ev in s]
        final = s.get_final_message()
    assert "input_json" in kinds
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"command": "echo hi && ls -la /tmp"}
    # The tool result goes back and the conversation continues.
    follow = c.messages.create(model="fake", max_tokens=3, tools=tools, messages=[  # type: ignore[arg-type]
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [{"type": "tool_use", "id": block.id, "name": "Bash", "input": block.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "hi there"}]},
    ])
    assert follow.content[0].text == "hi there hi"


def test_thinking_block_with_signature(turnout: TurnoutProcess) -> None:
    with client(turnout).messages.stream(
        model="fake", max_tokens=3, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "[[think]] ok go"}],
    ) as s:
        final = s.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "Thinking about it."
    assert final.content[0].signature == "fake-signature"
    assert final.content[1].text == "ok go ok"


def test_count_tokens_and_models(turnout: TurnoutProcess) -> None:
    c = client(turnout)
    n = c.messages.count_tokens(model="fake", system="be brief", messages=[{"role": "user", "content": "a b c d"}])
    assert n.input_tokens == 6
    ids = [m.id for m in c.models.list()]
    assert "fake" in ids and "some-local-model" in ids
    assert c.models.retrieve("fake").id == "fake"


def _fixture_posts() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*.json") if json.loads(p.read_text())["method"] == "POST")


@pytest.mark.parametrize("path", _fixture_posts(), ids=lambda p: p.stem)
def test_claude_code_fixture_replayed(turnout: TurnoutProcess, path: Path) -> None:
    """Every request Claude Code really sent is answered in a shape the SDK accepts."""
    fx = json.loads(path.read_text())
    body = dict(fx["body"])
    headers = {k: v for k, v in fx["headers"].items()
               if k.lower() in {"anthropic-beta", "x-claude-code-session-id", "x-app", "anthropic-dangerous-direct-browser-access"}}
    model, messages, max_tokens = body.pop("model"), body.pop("messages"), body.pop("max_tokens")
    stream = body.pop("stream", False)
    c = client(turnout)
    kw = dict(model=model, messages=messages, max_tokens=max_tokens, extra_body=body,
              extra_headers=headers, extra_query={"beta": "true"}, timeout=60)
    if stream:
        with c.messages.stream(**kw) as s:  # type: ignore[arg-type]
            final = s.get_final_message()
    else:
        final = c.messages.create(**kw)  # type: ignore[arg-type]
    assert final.content and final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 1000  # the whole Claude Code prompt reached the worker


def test_head_root_without_token(turnout: TurnoutProcess) -> None:
    r = urllib3.request("HEAD", turnout.base_url + "/")
    assert r.status == 200


# ---------------------------------------------------------------------- errors


def test_bad_token_is_401(turnout: TurnoutProcess) -> None:
    c = anthropic.Anthropic(base_url=turnout.base_url, api_key="wrong-key-123", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        c.messages.create(model="fake", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert ei.value.status_code == 401
    assert ei.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert "wrong-key-123" not in json.dumps(ei.value.body)
    r = urllib3.request("GET", turnout.base_url + "/v1/models")
    assert r.status == 401


def test_unknown_model_is_404(turnout: TurnoutProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as ei:
        client(turnout).messages.create(model="gpt-nope", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert ei.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "gpt-nope" in ei.value.body["error"]["message"]  # type: ignore[index]


def _post(t: TurnoutProcess, body: bytes, path: str = "/v1/messages") -> urllib3.BaseHTTPResponse:
    return urllib3.request("POST", t.base_url + path, body=body,
                           headers={"x-api-key": t.token, "content-type": "application/json", "anthropic-version": "2023-06-01"})


def test_malformed_json_is_400(turnout: TurnoutProcess) -> None:
    r = _post(turnout, b'{"model": "fake", "max_tokens": ')
    assert r.status == 400
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "JSON" in err["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "fake", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "fake", "max_tokens": "ten", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "fake", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "fake", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "fake", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "txt", "text": "x"}]}]}, "messages.0.content"),
        ({"model": "fake", "max_tokens": 5, "messages": []}, "messages"),
    ],
)
def test_wrong_field_is_named(turnout: TurnoutProcess, body: dict[str, object], field: str) -> None:
    r = _post(turnout, json.dumps(body).encode())
    assert r.status == 400, r.data
    msg = r.json()["error"]["message"]
    assert msg.startswith(field), msg


def test_body_too_large_is_413(turnout: TurnoutProcess) -> None:
    big = json.dumps({"model": "fake", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]})
    r = _post(turnout, big.encode())
    assert r.status == 413
    assert r.json()["error"]["type"] == "request_too_large"


def test_unknown_route_is_404_in_api_shape(turnout: TurnoutProcess) -> None:
    r = _post(turnout, b"{}", path="/v1/nothing")
    assert r.status == 404 and r.json()["error"]["type"] == "not_found_error"
