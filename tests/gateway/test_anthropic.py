"""Anthropic adapter: request parsing and the SSE grammar, without processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import FIXTURES
from turnout.gateway import anthropic as a
from turnout.gateway import anthropic_stream as s
from turnout.gateway.errors import ApiError
from turnout.protocol import messages as m
from turnout.protocol.chat import TextPart, ThinkingPart, ToolResultPart, ToolUsePart, Usage


def _posts() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*.json") if json.loads(p.read_text())["method"] == "POST")


def test_the_claude_code_fixtures_are_all_there() -> None:
    # The parametrized tests below and in tests/e2e would pass with none.
    assert len(_posts()) == 10 and (FIXTURES / "README.md").exists()


@pytest.mark.parametrize("path", _posts(), ids=lambda p: p.stem)
def test_every_claude_code_body_parses_completely(path: Path) -> None:
    fx = json.loads(path.read_text())
    body = fx["body"]
    req = a.parse_messages(json.dumps(body).encode(), fx["headers"])
    assert req.model == body["model"] and req.max_tokens == body["max_tokens"]
    assert len(req.tools) == len(body["tools"])
    assert len(req.system) == len(body["system"])  # every system block reaches the prompt
    # role: "system" entries inside messages are kept, in place
    assert [msg.role for msg in req.messages] == [msg["role"] for msg in body["messages"]]
    assert req.session_id == fx["headers"]["X-Claude-Code-Session-Id"]
    assert "claude-code-20250219" in req.extra["anthropic_beta"]
    if "context_management" in body:
        assert req.extra["context_management"] == body["context_management"]
    if "thinking" in body:
        assert req.thinking is not None and req.thinking.type == body["thinking"]["type"]


def test_tool_round_trip_blocks() -> None:
    fx = json.loads((FIXTURES / "03-tool-bash-request-3.json").read_text())
    req = a.parse_messages(json.dumps(fx["body"]).encode(), fx["headers"])
    use = req.messages[-2].content[0]
    res = req.messages[-1].content[0]
    assert isinstance(use, ToolUsePart) and use.name == "Bash" and use.input["command"] == "echo hi"
    assert isinstance(res, ToolResultPart) and res.tool_use_id == use.id and res.content[0] == TextPart("hi")


def test_session_id_from_metadata_when_no_header() -> None:
    body = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": json.dumps({"session_id": "abc-123"})}}
    assert a.parse_messages(json.dumps(body).encode(), {}).session_id == "abc-123"


def test_thinking_and_redacted_blocks() -> None:
    body = {"model": "x", "max_tokens": 1, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                          {"type": "redacted_thinking", "data": "opaque"}, {"type": "text", "text": "a"}]},
        {"role": "user", "content": "again"}]}
    req = a.parse_messages(json.dumps(body).encode(), {})
    t, r, _ = req.messages[1].content
    assert t == ThinkingPart("hmm", "sig") and r == ThinkingPart("opaque", redacted=True)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "x", "messages": []}, "max_tokens"),
    ({"model": "x", "max_tokens": 1, "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"model": "x", "max_tokens": 1, "temperature": 3, "messages": [{"role": "user", "content": "q"}]}, "temperature"),
    ({"model": "x", "max_tokens": 1, "tool_choice": {"type": "tool"}, "messages": [{"role": "user", "content": "q"}]}, "tool_choice.name"),
])
def test_validation_errors_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as ei:
        a.parse_messages(json.dumps(body).encode(), {})
    assert ei.value.status == 400 and ei.value.param == param
    assert ei.value.message.startswith(param)


def _events(raw: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk:
            continue
        ev, data = chunk.split("\n")
        out.append((ev.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_sse_grammar_text_thinking_tool() -> None:
    enc = s.SseEncoder("mdl", "msg_1", want_thinking=True)
    raw = enc.start(10, 4)
    for msg in [m.ThinkingDelta("r", 0, text="t"), m.ThinkingDelta("r", 0, signature="s"),
                m.Ping("r", 0), m.TextDelta("r", 0, "he"), m.TextDelta("r", 0, "llo"),
                m.ToolCallStart("r", 0, 0, "toolu_1", "Bash"), m.ToolArgsDelta("r", 0, 0, '{"a":'),
                m.ToolArgsDelta("r", 0, 0, "1}"), m.Done("r", 0, "tool_use", Usage(10, 7))]:
        raw += enc.encode(msg)
    evs = _events(raw)
    names = [e for e, _ in evs]
    assert names == ["message_start",
                     "content_block_start", "content_block_delta", "content_block_delta", "ping",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert evs[0][1]["message"]["usage"]["cache_read_input_tokens"] == 4  # type: ignore[index]
    assert [d["index"] for e, d in evs if e == "content_block_start"] == [0, 1, 2]
    assert evs[3][1]["delta"] == {"type": "signature_delta", "signature": "s"}
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"  # type: ignore[index]
    assert evs[-2][1]["usage"]["output_tokens"] == 7  # type: ignore[index]


def test_sse_thinking_hidden_when_not_requested() -> None:
    enc = s.SseEncoder("mdl", "msg_1", want_thinking=False)
    assert enc.encode(m.ThinkingDelta("r", 0, text="secret")) == b""


def test_sse_error_mid_stream() -> None:
    enc = s.SseEncoder("mdl", "msg_1", want_thinking=False)
    enc.start(1, 0)
    enc.encode(m.TextDelta("r", 0, "x"))
    (ev, data), = _events(enc.encode(m.Failed("r", 0, "worker_died", "worker gone")))
    assert ev == "error" and data == {"type": "error", "error": {"type": "overloaded_error", "message": "worker gone"}}


def test_a_block_type_that_is_not_a_string_is_a_400() -> None:
    """Found by the fuzz tests (tests/e2e/test_fuzz_api.py): a tool result's inner
    block whose "type" is an object was a 500 (unhashable dict)."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": {"x": 1}}]}]}]}
    with pytest.raises(ApiError) as ei:
        a.parse_messages(json.dumps(body).encode())
    assert ei.value.status == 400
