"""Fold a worker's stream into a whole answer (for non-streaming responses).

Shared by every client API: the result is canonical parts, a stop reason and usage;
each adapter renders it in its own shape.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec

from turnout.gateway.errors import ApiError, from_fail
from turnout.gateway.routing import Source
from turnout.protocol import messages as m
from turnout.protocol.chat import Part, TextPart, ThinkingPart, ToolUsePart, Usage


class AnthropicMessage:
    """An Anthropic upstream's events (m.Passthrough) folded into its Message
    object the way the official SDKs accumulate a stream: every block kept as
    sent, deltas applied (text, input_json, citations, thinking, signature),
    ``message_delta`` fields and usage counts overwriting.

    Text and thinking deltas are kept as lists and joined once, when their block
    stops (or the message ends): appending to a string per delta is quadratic."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self._json: dict[int, list[str]] = {}
        self._pieces: dict[tuple[int, str], list[str]] = {}  # (block index, "text"|"thinking") -> deltas

    def feed(self, event: str, data: bytes) -> int:
        """Apply one event; returns the bytes of content it added."""
        ev = msgspec.json.decode(data)
        if not isinstance(ev, dict):
            return 0
        t = ev.get("type", event)
        if t == "message_start":
            self.message = ev["message"]
            self.message["content"] = []
            return 0
        msg = self.message
        if msg is None:
            return 0
        if t == "content_block_start":
            msg["content"].append(ev["content_block"])
        elif t == "content_block_delta":
            i, d = ev["index"], ev["delta"]
            block = msg["content"][i]
            dt = d.get("type")
            if dt == "text_delta":
                self._piece(block, i, "text").append(d["text"])
                return len(d["text"])
            if dt == "input_json_delta":
                self._json.setdefault(i, []).append(d["partial_json"])
                return len(d["partial_json"])
            if dt == "citations_delta":
                block["citations"] = [*(block.get("citations") or []), d["citation"]]
            elif dt == "thinking_delta":
                self._piece(block, i, "thinking").append(d["thinking"])
                return len(d["thinking"])
            elif dt == "signature_delta":
                block["signature"] = d["signature"]
        elif t == "content_block_stop":
            self._join(ev["index"])
            raw = "".join(self._json.pop(ev["index"], []))
            if raw:
                msg["content"][ev["index"]]["input"] = parse_tool_args(raw)
        elif t == "message_delta":
            msg.update(ev.get("delta") or {})
            usage = msg.setdefault("usage", {})
            usage.update({k: v for k, v in (ev.get("usage") or {}).items() if v is not None})
        elif t == "message_stop":
            for i in {i for i, _ in self._pieces}:
                self._join(i)
        return 0

    def _piece(self, block: dict[str, Any], i: int, key: str) -> list[str]:
        got = self._pieces.get((i, key))
        if got is None:
            got = self._pieces[(i, key)] = [block.get(key, "")]
        return got

    def _join(self, i: int) -> None:
        assert self.message is not None
        for key in ("text", "thinking"):
            got = self._pieces.pop((i, key), None)
            if got is not None:
                self.message["content"][i][key] = "".join(got)


@dataclass
class Collected:
    """A stream folded into a whole answer, in time linear in its size: text and
    thinking deltas are kept as lists and joined when their part ends.
    ``size``: bytes of content received so far (what :func:`collect` bounds)."""

    parts: list[Part] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str = ""
    usage: Usage = field(default_factory=Usage)
    _args: dict[int, list[str]] = field(default_factory=dict)
    _tool_at: dict[int, int] = field(default_factory=dict)
    upstream: AnthropicMessage | None = None  # the upstream's own message, when it spoke the client's API
    size: int = 0
    _texts: list[str] = field(default_factory=list)  # deltas of the last part, when it is text or thinking
    _sigs: list[str] = field(default_factory=list)

    def _flush(self) -> None:
        last = self.parts[-1] if self.parts else None
        if isinstance(last, TextPart) and self._texts:
            last.text = "".join(self._texts)
        elif isinstance(last, ThinkingPart) and (self._texts or self._sigs):
            last.thinking = "".join(self._texts)
            last.signature = "".join(self._sigs)
        self._texts = []
        self._sigs = []

    def add(self, msg: m.StreamMsg) -> None:
        last = self.parts[-1] if self.parts else None
        if isinstance(msg, m.Passthrough):
            if self.upstream is None:
                self.upstream = AnthropicMessage()
            self.size += self.upstream.feed(msg.event, msg.data)
        elif isinstance(msg, m.Started):
            self.usage.input_tokens = msg.input_tokens
            self.usage.cache_read_input_tokens = msg.cache_read_input_tokens
        elif isinstance(msg, m.TextDelta):
            self.size += len(msg.text)
            if not isinstance(last, TextPart):
                self._flush()
                self.parts.append(TextPart(""))
            self._texts.append(msg.text)
        elif isinstance(msg, m.ThinkingDelta):
            self.size += len(msg.text) + len(msg.signature)
            if not isinstance(last, ThinkingPart):
                self._flush()
                self.parts.append(ThinkingPart("", ""))
            self._texts.append(msg.text)
            self._sigs.append(msg.signature)
        elif isinstance(msg, m.ToolCallStart):
            self._flush()
            self._tool_at[msg.index] = len(self.parts)
            self._args[msg.index] = []
            self.parts.append(ToolUsePart(msg.id, msg.name, {}))
        elif isinstance(msg, m.ToolArgsDelta):
            self.size += len(msg.partial_json)
            self._args.setdefault(msg.index, []).append(msg.partial_json)
        elif isinstance(msg, m.Done):
            self._flush()
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


async def collect(st: Source, max_bytes: int = 0) -> Collected:
    """Wait for the whole answer; a failure raises the matching ApiError.

    ``max_bytes`` (0: no bound): an answer whose content grows past it is stopped
    at its origin (``st.cancel()``) and answered with a 400 that says so, so one
    request cannot hold unbounded memory. Between batches the loop gets a turn
    (``asyncio.sleep(0)``), so a fast producer cannot keep it from /healthz, other
    streams or this client's disconnect."""
    out = Collected()
    while True:
        for msg in await st.next_batch():
            if isinstance(msg, m.Failed):
                raise from_fail(msg.kind, msg.message)
            out.add(msg)
            if isinstance(msg, m.Done):
                return out
        if max_bytes and out.size > max_bytes:
            st.cancel()
            raise ApiError(400, f"the answer grew past {max_bytes / 2**20:g} MiB before it ended "
                                f"(server.max_response_mb): ask for fewer max_tokens, or stream it (\"stream\": true)")
        await asyncio.sleep(0)
