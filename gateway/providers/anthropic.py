"""Anthropic Messages API upstream.

When the client spoke Anthropic too and its history is safe for Anthropic, the
client's body goes upstream as sent (only ``model`` and ``stream`` replaced): every
``cache_control``, thinking signature, ``context_management`` and ``output_config``
survives. Otherwise the body is built from the canonical request. The answer is
always streamed upstream (``stream: true``) and parsed from the documented SSE
grammar: message_start, content_block_start/delta/stop (text_delta,
thinking_delta, signature_delta, input_json_delta), message_delta, message_stop,
ping, error.
"""

from __future__ import annotations

from typing import Any

import msgspec

from turnout.gateway import history
from turnout.gateway.providers.base import Upstream, decode, mk_done
from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    ImagePart,
    OpaquePart,
    Part,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from turnout.protocol.config import EndpointConfig

API_VERSION = "2023-06-01"
JSON_ONLY = "Answer with one JSON object and nothing else: no prose, no code fence."
_enc = msgspec.json.Encoder()

_STOP = {"end_turn": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
         "tool_use": "tool_use", "refusal": "refusal", "pause_turn": "end_turn",
         "model_context_window_exceeded": "model_context_window_exceeded"}
# Fields of a Messages body that count_tokens refuses.
_NOT_COUNTED = ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata",
                "service_tier", "container")
_ERR_KIND: dict[str, m.FailKind] = {"overloaded_error": "overloaded", "rate_limit_error": "overloaded",
                                    "api_error": "overloaded", "invalid_request_error": "invalid_request",
                                    "request_too_large": "invalid_request"}


def _cache(p: TextPart, block: dict[str, Any]) -> dict[str, Any]:
    if p.cache:
        block["cache_control"] = {"type": "ephemeral"}
    return block


def _image(p: ImagePart) -> dict[str, Any]:
    if p.data:
        return {"type": "image", "source": {"type": "base64", "media_type": p.media_type, "data": p.data}}
    return {"type": "image", "source": {"type": "url", "url": p.url}}


def _part(p: Part) -> dict[str, Any]:
    if isinstance(p, TextPart):
        return _cache(p, {"type": "text", "text": p.text})
    if isinstance(p, ImagePart):
        return _image(p)
    if isinstance(p, ToolUsePart):
        return {"type": "tool_use", "id": p.id, "name": p.name, "input": p.input}
    if isinstance(p, ToolResultPart):
        content = [_cache(c, {"type": "text", "text": c.text}) if isinstance(c, TextPart) else _image(c)
                   for c in p.content]
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": p.tool_use_id, "content": content}
        if p.is_error:
            block["is_error"] = True
        return block
    if isinstance(p, OpaquePart):
        return p.block  # make_safe kept only Anthropic's own
    assert isinstance(p, ThinkingPart)
    if p.redacted:
        return {"type": "redacted_thinking", "data": p.thinking}
    return {"type": "thinking", "thinking": p.thinking, "signature": p.signature}


def build_body(req: ChatRequest, model: str) -> dict[str, Any]:
    """The Messages body for a canonical request (already made safe)."""
    system = [_cache(p, {"type": "text", "text": p.text}) for p in req.system]
    messages: list[dict[str, Any]] = []
    for msg in req.messages:
        if msg.role == "system":
            # Mid-conversation system text joins the system prompt: the public API
            # takes no system role inside messages.
            system.extend({"type": "text", "text": p.text} for p in msg.content if isinstance(p, TextPart))
            continue
        blocks = [_part(p) for p in msg.content]
        if not blocks:
            continue
        if messages and messages[-1]["role"] == msg.role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": msg.role, "content": blocks})
    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens, "messages": messages, "stream": True}
    if system:
        body["system"] = system
    if req.tools:
        body["tools"] = [{"name": t.name, "description": t.description,
                          "input_schema": t.input_schema or {"type": "object", "properties": {}}} for t in req.tools]
    if req.tool_choice is not None and req.tools:
        tc: dict[str, Any] = {"type": req.tool_choice.type}
        if req.tool_choice.type == "tool":
            tc["name"] = req.tool_choice.name
        if req.tool_choice.disable_parallel and req.tool_choice.type != "none":
            tc["disable_parallel_tool_use"] = True
        body["tool_choice"] = tc
    if req.thinking is not None and req.thinking.type != "disabled":
        th: dict[str, Any] = {"type": req.thinking.type}
        if req.thinking.type == "enabled":
            th["budget_tokens"] = max(1024, min(req.thinking.budget_tokens or 1024, req.max_tokens - 1))
        body["thinking"] = th
    for k, v in (("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k)):
        if v is not None:
            body[k] = v
    if req.stop:
        body["stop_sequences"] = req.stop
    if req.api == "anthropic":
        for k in ("metadata", "output_config", "output_format", "context_management", "service_tier"):
            if k in req.extra:
                body[k] = req.extra[k]
    elif req.response_format is not None and req.response_format.schema:
        # Another API's structured output: Anthropic's is output_config.format (GA).
        body["output_config"] = {"format": {"type": "json_schema", "schema": req.response_format.schema}}
    elif req.response_format is not None:  # JSON with no schema: Anthropic has no such mode
        body.setdefault("system", []).append({"type": "text", "text": JSON_ONLY})
    return body


class AnthropicProvider:
    kind = "anthropic"

    def build(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
              raw: bytes | None, stream: bool) -> Upstream:
        base = (ep.base_url or "https://api.anthropic.com").rstrip("/")
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION,
                   "accept": "text/event-stream"}
        if key:
            headers["x-api-key"] = key
        betas = history.filter_betas(req.extra.get("anthropic_beta", []) if req.api == "anthropic" else [],
                                     "anthropic", ep.betas)
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        if raw is not None and req.api == "anthropic" and not history.needs_repair(req, "anthropic"):
            body = decode(raw)
            body["model"] = model
            body["stream"] = True
            data = _enc.encode(body)
        else:
            data = _enc.encode(build_body(history.make_safe(req, "anthropic"), model))
        return Upstream(f"{base}/v1/messages", headers, data)

    def build_count(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
                    raw: bytes | None) -> Upstream:
        up = self.build(ep, model, req, key, raw, False)
        body = decode(up.body)
        for k in _NOT_COUNTED:
            body.pop(k, None)
        up.headers.pop("accept", None)
        return Upstream(up.url + "/count_tokens", up.headers, _enc.encode(body), stream=False)

    def parse_count(self, body: bytes) -> int:
        return int(decode(body)["input_tokens"])

    def parser(self, passthrough: bool = False) -> AnthropicParser:
        return AnthropicParser(passthrough)

    def error_message(self, body: bytes) -> str:
        try:
            err = decode(body)
            return str(err["error"]["message"])
        except (msgspec.DecodeError, KeyError, TypeError):
            return body[:300].decode(errors="replace")


class AnthropicParser:
    """Anthropic SSE events -> stream messages.

    Options:
        passthrough: the client speaks Anthropic: each event also goes out as
            it came (an m.Passthrough ahead of its parsed messages), so blocks
            turnout has no model of reach the client too."""

    def __init__(self, passthrough: bool = False) -> None:
        self.finished = False
        self.usage = Usage()
        self.stop_reason = "end_turn"
        self.stop_sequence = ""
        self.passthrough = passthrough

    def feed(self, event: str, data: bytes) -> list[m.StreamMsg]:
        ev = decode(data)
        t = ev.get("type", event)
        out = self._parse(t, ev)
        if self.passthrough:
            return [m.Passthrough("", 0, t, data), *out]
        return out

    def _parse(self, t: str, ev: dict[str, Any]) -> list[m.StreamMsg]:
        if t == "content_block_delta":
            d = ev["delta"]
            dt = d.get("type")
            if dt == "text_delta":
                return [m.TextDelta("", 0, d["text"])]
            if dt == "input_json_delta":
                return [m.ToolArgsDelta("", 0, ev["index"], d["partial_json"])]
            if dt == "thinking_delta":
                return [m.ThinkingDelta("", 0, d["thinking"])]
            if dt == "signature_delta":
                return [m.ThinkingDelta("", 0, "", d["signature"])]
            return []
        if t == "content_block_start":
            b = ev["content_block"]
            bt = b.get("type")
            if bt == "tool_use":
                return [m.ToolCallStart("", 0, ev["index"], b["id"], b["name"])]
            if bt == "text" and b.get("text"):
                return [m.TextDelta("", 0, b["text"])]
            if bt == "thinking":
                return [m.ThinkingDelta("", 0, b.get("thinking", ""), b.get("signature", ""))]
            return []
        if t == "message_start":
            u = ev["message"].get("usage", {})
            self.usage.input_tokens = u.get("input_tokens", 0) or 0
            self.usage.cache_read_input_tokens = u.get("cache_read_input_tokens", 0) or 0
            self.usage.cache_creation_input_tokens = u.get("cache_creation_input_tokens", 0) or 0
            return [m.Started("", 0, self.usage.input_tokens, self.usage.cache_read_input_tokens)]
        if t == "message_delta":
            d = ev.get("delta", {})
            if d.get("stop_reason"):
                self.stop_reason = _STOP.get(d["stop_reason"], "end_turn")
            self.stop_sequence = d.get("stop_sequence") or ""
            u = ev.get("usage", {})
            self.usage.output_tokens = u.get("output_tokens", self.usage.output_tokens) or 0
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
                if u.get(k):
                    setattr(self.usage, k, u[k])
            return []
        if t == "message_stop":
            self.finished = True
            return [mk_done(self.stop_reason, self.usage, self.stop_sequence)]  # type: ignore[arg-type]
        if t == "ping":
            return [m.Ping("", 0)]
        if t == "error":
            self.finished = True
            err = ev.get("error", {})
            return [m.Failed("", 0, _ERR_KIND.get(err.get("type", ""), "internal"),
                             f"anthropic: {err.get('message', 'error')}")]
        return []

    def finish(self) -> list[m.StreamMsg]:
        self.finished = True
        return [m.Failed("", 0, "overloaded", "anthropic: the stream ended before message_stop")]
