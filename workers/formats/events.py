"""What a reader makes of a model's output: text, thinking and tool calls."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Thinking:
    text: str


@dataclass(slots=True)
class Call:
    """A complete tool call. ``arguments`` is a compact JSON object; ``id`` is the
    id the model wrote (Mistral, Kimi, Command R), "" when it wrote none: turnout
    gives every call its own id on the wire and rewrites ids in history."""

    name: str
    arguments: str
    id: str = ""


Event = Text | Thinking | Call


class NotACall(Exception):
    """A tool-call body that does not parse: the reader gives its text back."""
