"""OpenAI adapter: request parsing and chunk encoding, without processes."""

from __future__ import annotations

import json

import pytest

from turnout.gateway import openai_chat as o
from turnout.gateway.errors import ApiError
from turnout.protocol import messages as m
from turnout.protocol.chat import ImagePart, TextPart, ToolResultPart, ToolUsePart, Usage


def parse(body: dict[str, object]) -> tuple[object, bool]:
    return o.parse_chat(json.dumps(body).encode(), {})


def test_system_tools_and_tool_results() -> None:
    req, usage = parse({"model": "x", "stream": True, "stream_options": {"include_usage": True},
                        "tool_choice": "required", "max_completion_tokens": 9, "stop": "END", "messages": [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "developer", "content": "late instruction"},
    ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
    assert usage is True
    assert req.system == [TextPart("be nice")]  # type: ignore[attr-defined]
    msgs = req.messages  # type: ignore[attr-defined]
    assert msgs[0].content[1] == ImagePart(media_type="image/png", data="AAAA")
    assert msgs[1].content == [ToolUsePart("c1", "f", {"a": 1}), ToolUsePart("c2", "g", {})]
    assert msgs[2].role == "user" and [p.tool_use_id for p in msgs[2].content] == ["c1", "c2"]
    assert isinstance(msgs[2].content[0], ToolResultPart)
    assert msgs[3].role == "system"  # a mid-conversation instruction stays in place
    assert req.tool_choice.type == "any" and req.max_tokens == 9 and req.stop == ["END"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "x", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "x", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "x", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}},
     "response_format.type"),
    ({"model": "x", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
     "response_format.json_schema"),
    ({"model": "x", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
])
def test_errors_name_the_param(body: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as ei:
        parse(body)
    assert ei.value.param == param
    assert ei.value.body("openai")["error"]["param"] == param  # type: ignore[index]


def _chunks(raw: bytes) -> list[object]:
    out: list[object] = []
    for line in raw.decode().split("\n\n"):
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chunk_stream_with_tools_and_usage() -> None:
    enc = o.ChunkEncoder("mdl", "chatcmpl-1", include_usage=True)
    raw = enc.start()
    for msg in [m.TextDelta("r", 0, "hi"), m.ToolCallStart("r", 0, 3, "call_1", "f"),
                m.ToolArgsDelta("r", 0, 3, "{}"), m.Done("r", 0, "tool_use", Usage(5, 2))]:
        raw += enc.encode(msg)
    ch = _chunks(raw)
    assert ch[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # type: ignore[index]
    assert ch[2]["choices"][0]["delta"]["tool_calls"][0] == {  # type: ignore[index]
        "index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert ch[4]["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]
    assert ch[5]["choices"] == [] and ch[5]["usage"]["total_tokens"] == 7  # type: ignore[index]
    assert ch[-1] == "[DONE]"
