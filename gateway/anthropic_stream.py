"""Anthropic Messages API answers: a whole message as JSON, or the SSE event stream
(message_start, content blocks, message_delta, message_stop), from stream messages.
The request side is gateway/anthropic.py."""

from __future__ import annotations

from typing import Any

import msgspec

from turnout.gateway.collect import Collected
from turnout.gateway.errors import from_fail
from turnout.protocol import messages as m
from turnout.protocol.chat import TextPart, ThinkingPart, ToolUsePart
from turnout.protocol.ids import hex_id


def new_message_id() -> str:
    return hex_id("msg_")


def _client_stop_reason(reason: str) -> str:
    return "end_turn" if reason == "cancelled" else reason


def _usage(u: Any) -> dict[str, int]:
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
    }


def message_body(c: Collected, model: str, msg_id: str, want_thinking: bool) -> dict[str, Any]:
    if c.upstream is not None and c.upstream.message is not None:
        return {**c.upstream.message, "model": model}  # an Anthropic upstream's answer, as it gave it
    content: list[dict[str, Any]] = []
    for p in c.parts:
        if isinstance(p, TextPart):
            content.append({"type": "text", "text": p.text})
        elif isinstance(p, ToolUsePart):
            content.append({"type": "tool_use", "id": p.id, "name": p.name, "input": p.input})
        elif isinstance(p, ThinkingPart) and want_thinking:
            content.append({"type": "thinking", "thinking": p.thinking, "signature": p.signature})
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _client_stop_reason(c.stop_reason),
        "stop_sequence": c.stop_sequence or None,
        "usage": _usage(c.usage),
    }


_enc = msgspec.json.Encoder()


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _enc.encode(data) + b"\n\n"


def raw_event(event: str, data: bytes) -> bytes:
    """An upstream event's JSON framed again (each line of it its own ``data:``)."""
    return b"event: " + event.encode() + b"\ndata: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


PING = sse("ping", {"type": "ping"})


class SseEncoder:
    """Turns stream messages into Anthropic SSE events, keeping block state.

    Grammar: message_start, then per block content_block_start, deltas,
    content_block_stop; then message_delta (stop_reason, usage) and message_stop.
    A failure mid-stream is ``event: error`` and the stream ends."""

    def __init__(self, model: str, msg_id: str, want_thinking: bool) -> None:
        self.model = model
        self.msg_id = msg_id
        self.want_thinking = want_thinking
        self.index = -1
        self.open: str | None = None  # "text" | "thinking" | "tool_use"
        self.tool_index: int | None = None
        self.input_tokens = 0
        self.cache_read = 0
        self.started = False
        self.finished = False
        # The upstream speaks Anthropic too: its events go out as they came
        # (m.Passthrough); only turnout's own failures are encoded here.
        self.raw = False

    def _encode_raw(self, msg: m.StreamMsg) -> bytes:
        if isinstance(msg, m.Passthrough):
            if msg.event == "message_start":
                # The model as the client named it, as on every other route.
                ev = msgspec.json.decode(msg.data)
                ev["message"]["model"] = self.model
                return sse("message_start", ev)
            if msg.event in ("message_stop", "error"):
                self.finished = True
            return raw_event(msg.event, msg.data)
        if isinstance(msg, m.Failed) and not self.finished:
            self.finished = True
            return sse("error", from_fail(msg.kind, msg.message).body("anthropic"))
        return b""

    def _start_block(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._stop_block(out)
        self.index += 1
        self.open = kind
        out.append(sse("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}))

    def _stop_block(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(sse("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.open = None

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(sse("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}))

    def start(self, input_tokens: int, cache_read: int) -> bytes:
        self.started = True
        self.input_tokens = input_tokens
        self.cache_read = cache_read
        return sse("message_start", {
            "type": "message_start",
            "message": {
                "id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 0,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": cache_read},
            },
        })

    def encode(self, msg: m.StreamMsg) -> bytes:
        if self.raw:
            return self._encode_raw(msg)
        out: list[bytes] = []
        if isinstance(msg, m.TextDelta):
            if self.open != "text":
                self._start_block("text", {"type": "text", "text": ""}, out)
            self._delta({"type": "text_delta", "text": msg.text}, out)
        elif isinstance(msg, m.ThinkingDelta):
            if not self.want_thinking:
                return b""
            if self.open != "thinking":
                self._start_block("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            if msg.text:
                self._delta({"type": "thinking_delta", "thinking": msg.text}, out)
            if msg.signature:
                self._delta({"type": "signature_delta", "signature": msg.signature}, out)
        elif isinstance(msg, m.ToolCallStart):
            self._start_block("tool_use", {"type": "tool_use", "id": msg.id, "name": msg.name, "input": {}}, out)
            self.tool_index = msg.index
        elif isinstance(msg, m.ToolArgsDelta):
            if self.open == "tool_use" and msg.index == self.tool_index:
                self._delta({"type": "input_json_delta", "partial_json": msg.partial_json}, out)
        elif isinstance(msg, m.Ping):
            out.append(PING)
        elif isinstance(msg, m.Done):
            self._stop_block(out)
            u = msg.usage
            out.append(sse("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": _client_stop_reason(msg.stop_reason), "stop_sequence": msg.stop_sequence or None},
                "usage": {"input_tokens": u.input_tokens or self.input_tokens, "output_tokens": u.output_tokens,
                          "cache_creation_input_tokens": u.cache_creation_input_tokens,
                          "cache_read_input_tokens": u.cache_read_input_tokens or self.cache_read},
            }))
            out.append(sse("message_stop", {"type": "message_stop"}))
            self.finished = True
        elif isinstance(msg, m.Failed):
            err = from_fail(msg.kind, msg.message)
            out.append(sse("error", err.body("anthropic")))
            self.finished = True
        return b"".join(out)
