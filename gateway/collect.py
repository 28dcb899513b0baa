"""Fold a worker's stream into a whole answer (for non-streaming responses).

Shared by every client API: the result is canonical parts, a stop reason and usage;
each adapter renders it in its own shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.errors import from_fail
from gateway.routing import Source
from protocol import messages as m
from protocol.chat import Part, TextPart, ThinkingPart, ToolUsePart, Usage


class AnthropicMessage:
    """An Anthropic upstream's events (m.Passthrough) folded into its Message
    object the way the official SDKs accumulate a stream: every block kept as
    sent, deltas applied (text, input_json, citations, thinking, signature),
    ``message_delta`` fields and usage counts overwriting."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self._json: dict[int, list[str]] = {}

    def feed(self, event: str, data: bytes) -> None:
        ev = msgspec.json.decode(data)
        t = ev.get("type", event)
        if t == "message_start":
            self.message = ev["message"]
            self.message["content"] = []
            return
        msg = self.message
        if msg is None:
            return
        if t == "content_block_start":
            msg["content"].append(ev["content_block"])
        elif t == "content_block_delta":
            i, d = ev["index"], ev["delta"]
            block = msg["content"][i]
            dt = d.get("type")
            if dt == "text_delta":
                block["text"] = block.get("text", "") + d["text"]
            elif dt == "input_json_delta":
                self._json.setdefault(i, []).append(d["partial_json"])
            elif dt == "citations_delta":
                block["citations"] = [*(block.get("citations") or []), d["citation"]]
            elif dt == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + d["thinking"]
            elif dt == "signature_delta":
                block["signature"] = d["signature"]
        elif t == "content_block_stop":
            raw = "".join(self._json.pop(ev["index"], []))
            if raw:
                msg["content"][ev["index"]]["input"] = parse_tool_args(raw)
        elif t == "message_delta":
            msg.update(ev.get("delta") or {})
            usage = msg.setdefault("usage", {})
            usage.update({k: v for k, v in (ev.get("usage") or {}).items() if v is not None})


@dataclass
class Collected:
    parts: list[Part] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str = ""
    usage: Usage = field(default_factory=Usage)
    _args: dict[int, list[str]] = field(default_factory=dict)
    _tool_at: dict[int, int] = field(default_factory=dict)
    upstream: AnthropicMessage | None = None  # the upstream's own message, when it spoke the client's API

    def add(self, msg: m.StreamMsg) -> None:
        last = self.parts[-1] if self.parts else None
        if isinstance(msg, m.Passthrough):
            if self.upstream is None:
                self.upstream = AnthropicMessage()
            self.upstream.feed(msg.event, msg.data)
        elif isinstance(msg, m.Started):
            self.usage.input_tokens = msg.input_tokens
            self.usage.cache_read_input_tokens = msg.cache_read_input_tokens
        elif isinstance(msg, m.TextDelta):
            if isinstance(last, TextPart):
                last.text += msg.text
            else:
                self.parts.append(TextPart(msg.text))
        elif isinstance(msg, m.ThinkingDelta):
            if isinstance(last, ThinkingPart):
                last.thinking += msg.text
                last.signature += msg.signature
            else:
                self.parts.append(ThinkingPart(msg.text, msg.signature))
        elif isinstance(msg, m.ToolCallStart):
            self._tool_at[msg.index] = len(self.parts)
            self._args[msg.index] = []
            self.parts.append(ToolUsePart(msg.id, msg.name, {}))
        elif isinstance(msg, m.ToolArgsDelta):
            self._args.setdefault(msg.index, []).append(msg.partial_json)
        elif isinstance(msg, m.Done):
            self.stop_reason = msg.stop_reason
            self.stop_sequence = msg.stop_sequence
            u = msg.usage
            self.usage.output_tokens = u.output_tokens
            self.usage.input_tokens = u.input_tokens or self.usage.input_tokens
            self.usage.cache_read_input_tokens = u.cache_read_input_tokens or self.usage.cache_read_input_tokens
            self.usage.cache_creation_input_tokens = u.cache_creation_input_tokens
            for idx, at in self._tool_at.items():
                part = self.parts[at]
                assert isinstance(part, ToolUsePart)
                part.input = parse_tool_args("".join(self._args.get(idx, [])))


def parse_tool_args(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        val = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {"_raw": raw}  # keep what the model said rather than lose it
    return val if isinstance(val, dict) else {"value": val}


async def collect(st: Source) -> Collected:
    """Wait for the whole answer; a failure raises the matching ApiError."""
    out = Collected()
    while True:
        for msg in await st.next_batch():
            if isinstance(msg, m.Failed):
                raise from_fail(msg.kind, msg.message)
            out.add(msg)
            if isinstance(msg, m.Done):
                return out
