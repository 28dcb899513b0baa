"""Each provider's request body and stream parsing, on documented wire samples."""

from __future__ import annotations

import json

from turnout.gateway.history import gemini_schema, make_safe, needs_repair, tag_signature
from turnout.gateway.providers.anthropic import AnthropicParser, AnthropicProvider
from turnout.gateway.providers.gemini import GeminiParser, GeminiProvider
from turnout.gateway.providers.openai import OpenAIParser, OpenAIProvider
from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from turnout.protocol.config import EndpointConfig

LONG_SIG = "E" * 120


def convo() -> ChatRequest:
    return ChatRequest(
        model="x", max_tokens=100, system=[TextPart("sys", cache=True)], tools=[Tool("Bash", "run", {"type": "object", "properties": {"c": {"type": "string"}}})],
        tool_choice=ToolChoice("tool", "Bash"),
        messages=[
            Message("user", [TextPart("look"), ImagePart("image/png", "AAAA")]),
            Message("assistant", [ThinkingPart("hmm", LONG_SIG), ToolUsePart("call_1", "Bash", {"c": "ls"})]),
            Message("user", [ToolResultPart("call_1", [TextPart("a b")]), TextPart("next")]),
        ])


def test_openai_body() -> None:
    up = OpenAIProvider().build(EndpointConfig("o", "openai", "http://h/v1"), "gpt", convo(), "KEY", None, True)
    assert up.url == "http://h/v1/chat/completions" and up.headers["authorization"] == "Bearer KEY"
    b = json.loads(up.body)
    assert [x["role"] for x in b["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert b["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert b["messages"][2]["tool_calls"][0]["function"] == {"name": "Bash", "arguments": '{"c":"ls"}'}
    assert b["tool_choice"] == {"type": "function", "function": {"name": "Bash"}}
    assert b["max_completion_tokens"] == 100 and b["stream_options"] == {"include_usage": True}
    compat = json.loads(OpenAIProvider(compatible=True).build(EndpointConfig("l", "openai_compatible"), "m", convo(), None, None, True).body)
    assert compat["max_tokens"] == 100 and "max_completion_tokens" not in compat


def test_openai_stream_parse() -> None:
    p = OpenAIParser()
    out: list[m.StreamMsg] = []
    for line in [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "think"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "Bash", "arguments": ""}}]}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"c\":1}"}}]}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}},
    ]:
        out += p.feed("", json.dumps(line).encode())
    out += p.feed("", b"[DONE]")
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["ThinkingDelta", "TextDelta", "ToolCallStart", "ToolArgsDelta", "Done"]
    done = out[-1]
    assert isinstance(done, m.Done) and done.stop_reason == "tool_use"
    assert (done.usage.input_tokens, done.usage.cache_read_input_tokens, done.usage.output_tokens) == (6, 4, 3)


def test_anthropic_body_from_canonical_and_stream_parse() -> None:
    req = convo()
    req.api = "openai"
    up = AnthropicProvider().build(EndpointConfig("a", "anthropic", "http://h"), "claude", req, "K", None, True)
    b = json.loads(up.body)
    assert up.headers["x-api-key"] == "K" and b["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert b["messages"][1]["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": LONG_SIG}
    assert b["messages"][2]["content"][0]["type"] == "tool_result"
    p = AnthropicParser()
    evs = [("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 7, "cache_read_input_tokens": 2}}}),
           ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
           ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "S"}}),
           ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}}),
           ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
           ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
           ("message_stop", {"type": "message_stop"})]
    out = [x for ev, d in evs for x in p.feed(ev, json.dumps(d).encode())]
    assert isinstance(out[0], m.Started) and out[0].input_tokens == 7
    assert isinstance(out[2], m.ThinkingDelta) and out[2].signature == "S"
    assert isinstance(out[-1], m.Done) and out[-1].stop_reason == "tool_use" and out[-1].usage.output_tokens == 9
    err = AnthropicParser().feed("error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert isinstance(err[0], m.Failed) and err[0].kind == "overloaded"


def test_anthropic_window_end_is_kept_as_its_own_stop_reason() -> None:
    """model_context_window_exceeded stays itself in the canonical answer (the
    client APIs then say it in their words: tests/e2e/test_window_end.py)."""
    p = AnthropicParser()
    evs = [("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 7}}}),
           ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "model_context_window_exceeded"},
                              "usage": {"output_tokens": 3}}),
           ("message_stop", {"type": "message_stop"})]
    out = [x for ev, d in evs for x in p.feed(ev, json.dumps(d).encode())]
    assert isinstance(out[-1], m.Done) and out[-1].stop_reason == "model_context_window_exceeded"


def test_gemini_body_and_parse() -> None:
    req = convo()
    req.stream = True
    up = GeminiProvider().build(EndpointConfig("g", "gemini", "http://h"), "gemini-2.5", req, "G", None, True)
    assert up.url == "http://h/v1beta/models/gemini-2.5:streamGenerateContent?alt=sse" and up.headers["x-goog-api-key"] == "G"
    b = json.loads(up.body)
    assert b["systemInstruction"] == {"parts": [{"text": "sys"}]}
    assert [c["role"] for c in b["contents"]] == ["user", "model", "user"]
    assert b["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}
    call = b["contents"][1]["parts"][0]
    assert call["functionCall"] == {"id": "call_1", "name": "Bash", "args": {"c": "ls"}}
    assert call["thoughtSignature"] == "skip_thought_signature_validator"  # Anthropic's thinking dropped
    assert b["contents"][2]["parts"][0]["functionResponse"] == {"id": "call_1", "name": "Bash", "response": {"result": "a b"}}
    assert b["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["Bash"]}}
    req.stream = False
    assert GeminiProvider().build(EndpointConfig("g", "gemini", "http://h"), "g1", req, "G", None, False).url.endswith(":generateContent")
    p = GeminiParser()
    out = p.feed("", json.dumps({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "plan", "thought": True}, {"text": "Hi"},
        {"functionCall": {"name": "Bash", "args": {"c": "x"}}, "thoughtSignature": "SIG"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4, "thoughtsTokenCount": 2, "cachedContentTokenCount": 3}}).encode())
    out += p.finish()
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["ThinkingDelta", "TextDelta", "ThinkingDelta", "ToolCallStart", "ToolArgsDelta", "Done"]
    assert out[2].signature == tag_signature("gemini", "SIG")  # type: ignore[union-attr]
    done = out[-1]
    assert isinstance(done, m.Done) and done.stop_reason == "tool_use"
    assert (done.usage.input_tokens, done.usage.cache_read_input_tokens, done.usage.output_tokens) == (7, 3, 6)


def test_gemini_schema_removes_what_gemini_rejects() -> None:
    s = gemini_schema({"$schema": "x", "type": "object", "additionalProperties": False,
                       "$defs": {"P": {"type": "string", "format": "uri"}},
                       "properties": {"a": {"$ref": "#/$defs/P"}, "b": {"type": ["string", "null"]},
                                      "c": {"const": "fixed"}, "d": {"oneOf": [{"type": "integer", "exclusiveMinimum": 0}]}},
                       "required": ["a", "zz"]})
    assert s == {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "nullable": True},
                                                  "c": {"enum": ["fixed"], "type": "string"},
                                                  "d": {"anyOf": [{"type": "integer"}]}}, "required": ["a"]}


def test_history_repair_duplicate_ids_and_foreign_thinking() -> None:
    req = ChatRequest(model="x", max_tokens=10, messages=[
        Message("user", [TextPart("go")]),
        Message("assistant", [ThinkingPart("t", "fake-signature"), ToolUsePart("call_0", "A", {})]),
        Message("user", [ToolResultPart("call_0", [TextPart("r1")])]),
        Message("assistant", [ThinkingPart("t2", tag_signature("gemini", "G")), ToolUsePart("call_0", "B", {}),
                              ToolUsePart("call.x", "C", {})]),
        Message("user", [ToolResultPart("call_0", [TextPart("r2")])]),
    ])
    assert needs_repair(req, "anthropic")
    safe = make_safe(req, "anthropic")
    assert not needs_repair(safe, "anthropic")
    ids = [p.id for msg in safe.messages for p in msg.content if isinstance(p, ToolUsePart)]
    assert ids == ["call_0", "call_0_1", "call_x"]
    last = safe.messages[-1].content
    results = [p for p in last if isinstance(p, ToolResultPart)]
    assert {r.tool_use_id for r in results} == {"call_0_1", "call_x"}  # the unanswered call got an error result
    assert not any(isinstance(p, ThinkingPart) for msg in safe.messages for p in msg.content)
    gem = make_safe(req, "gemini")
    assert [p.signature for msg in gem.messages for p in msg.content if isinstance(p, ThinkingPart)] == [tag_signature("gemini", "G")]


def test_structured_output_reaches_each_provider_in_its_own_words() -> None:
    from turnout.gateway import anthropic as a
    from turnout.gateway import openai_chat as o

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"],
              "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}
    req, _ = o.parse_chat(json.dumps({"model": "x", "messages": [{"role": "user", "content": "count"}],
                                      "response_format": {"type": "json_schema", "json_schema": {
                                          "name": "count", "strict": True, "schema": schema}},
                                      "presence_penalty": 0.5}).encode())
    ep = EndpointConfig("e", "openai", "http://h/v1")
    b = json.loads(OpenAIProvider().build(ep, "gpt", req, "K", None, True).body)
    assert b["response_format"] == {"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": True}}
    assert b["presence_penalty"] == 0.5
    g = json.loads(GeminiProvider().build(EndpointConfig("g", "gemini"), "gem", req, "K", None, True).body)
    assert g["generationConfig"]["responseMimeType"] == "application/json"
    assert g["generationConfig"]["responseSchema"] == gemini_schema(schema)
    assert "$schema" not in g["generationConfig"]["responseSchema"]
    an = json.loads(AnthropicProvider().build(EndpointConfig("a", "anthropic"), "claude", req, "K", None, True).body)
    assert an["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    # JSON mode without a schema: Anthropic has none, so it is asked in words
    req2, _ = o.parse_chat(json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}],
                                       "response_format": {"type": "json_object"}}).encode())
    an2 = json.loads(AnthropicProvider().build(EndpointConfig("a", "anthropic"), "claude", req2, "K", None, True).body)
    assert "output_config" not in an2 and "one JSON object" in an2["system"][-1]["text"]
    # An Anthropic client's output_config.format becomes the same canonical format
    ra = a.parse_messages(json.dumps({"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                                      "output_config": {"format": {"type": "json_schema", "schema": schema}}}).encode())
    assert ra.response_format is not None and ra.response_format.schema == schema
    b3 = json.loads(OpenAIProvider().build(ep, "gpt", ra, "K", None, True).body)
    assert b3["response_format"]["json_schema"]["schema"] == schema
