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


@dataclass
class Collected:
    parts: list[Part] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str = ""
    usage: Usage = field(default_factory=Usage)
    _args: dict[int, list[str]] = field(default_factory=dict)
    _tool_at: dict[int, int] = field(default_factory=dict)

    def add(self, msg: m.StreamMsg) -> None:
        last = self.parts[-1] if self.parts else None
        if isinstance(msg, m.Started):
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
