"""Gemma. Gemma 4: ``<|channel>thought…<channel|>`` reasoning (possibly again after
the answer, possibly empty), ``<|tool_call>call:NAME{key:value,…}<tool_call|>`` with
Gemma's own value syntax (strings between ``<|"|>`` marks, bare keys). Gemma 2 and 3
have no tool format of their own: they are told to answer with a JSON call, as
:mod:`~workers.formats.families.generic` reads it, and end their turn with
``<end_of_turn>``."""

from __future__ import annotations

import json
import re
from typing import Any

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family, has
from turnout.workers.formats.families.generic import GENERIC, json_call
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import open_args

Q = '<|"|>'  # Gemma 4's string quote
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BARE = re.compile(r"[^,}\]\s]+")
_LITERALS = {"true": True, "false": False, "null": None}
_MAX_DEPTH = 64


class _Gemma:
    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def fail(self, what: str) -> NotACall:
        return NotACall(f"expected {what} at {self.i}: {self.s[self.i:self.i + 20]!r}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def eat(self, lit: str) -> bool:
        self.ws()
        if self.s.startswith(lit, self.i):
            self.i += len(lit)
            return True
        return False

    def eat_quote(self) -> bool:
        """At a JSON string's opening quote (left in place for json_string)."""
        self.ws()
        return self.s.startswith('"', self.i)

    def string(self) -> str:
        j = self.s.find(Q, self.i)
        if j < 0:
            raise self.fail("a closing " + Q)
        text = self.s[self.i:j]
        self.i = j + len(Q)
        return text

    def json_string(self) -> str:
        """A JSON-quoted string (a model, or turnout's forced-call grammar for a
        nested value, may write one)."""
        try:
            text, self.i = json.JSONDecoder(strict=False).raw_decode(self.s, self.i)
        except ValueError:
            raise self.fail("a closing quote") from None
        if not isinstance(text, str):
            raise self.fail("a string")
        return text

    def key(self) -> str:
        if self.eat(Q):
            key = self.string()
        elif self.eat_quote():
            key = self.json_string()
        else:
            j = self.i
            while j < len(self.s) and self.s[j] not in ":}":
                j += 1
            key = self.s[self.i:j].strip()
            self.i = j
            if not key:
                raise self.fail("a key")
        if not self.eat(":"):
            raise self.fail(":")
        return key

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail("a shallower value")
        if self.eat(Q):
            return self.string()
        if self.eat_quote():
            return self.json_string()
        if self.eat("{"):
            obj: dict[str, Any] = {}
            while not self.eat("}"):
                k = self.key()
                obj[k] = self.value(depth + 1)
                if not self.eat(","):
                    if not self.eat("}"):
                        raise self.fail("}")
                    break
            return obj
        if self.eat("["):
            items: list[Any] = []
            while not self.eat("]"):
                items.append(self.value(depth + 1))
                if not self.eat(","):
                    if not self.eat("]"):
                        raise self.fail("]")
                    break
            return items
        m = _NUMBER.match(self.s, self.i)
        if m and (m.end() == len(self.s) or self.s[m.end()] in ",}] \t\r\n"):
            self.i = m.end()
            text = m.group(0)
            return float(text) if any(c in text for c in ".eE") else int(text)
        m = _BARE.match(self.s, self.i)
        if not m:
            raise self.fail("a value")
        self.i = m.end()
        word = m.group(0)
        # a model that leaves a string unquoted still means the string
        return _LITERALS[word] if word in _LITERALS else word


def parse_gemma4_call(body: str, tools: ToolSet) -> list[Call]:
    """The inside of ``<|tool_call>…<tool_call|>``: ``call:NAME{…}``."""
    s = body.strip()
    if not s.startswith("call:"):
        raise NotACall("no call:")
    j = s.find("{")
    if j < 0:
        raise NotACall("no arguments")
    name = s[5:j].strip()
    if not name or any(c in name for c in "<>\n "):
        raise NotACall("no function name")
    r = _Gemma(s)
    r.i = j
    args = r.value()
    r.ws()
    if r.i != len(s) or not isinstance(args, dict):
        raise NotACall("text after the arguments")
    return [Call(name, dumps(args))]


class Gemma4SoFar:
    """``CallSyntax.partial`` for :func:`parse_gemma4_call`: the call is known once
    ``call:NAME{`` is written; an argument counts once the ``,`` or ``}`` after
    its value is. Resumes after the last finished argument; a string being
    written is searched for its closing quote only where it grew."""

    def __init__(self) -> None:
        self.name = ""
        self.i = -1  # where to resume: after "{" or a finished argument
        self.args: dict[str, Any] = {}
        self.q_at = self.q_pos = -1  # the string being written: its quote, how far it was searched

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        if self.i < 0:
            s = body.lstrip()
            j = body.find("{")
            if not s.startswith("call:") or j < 0:
                return []
            name = body[body.index("call:") + 5:j].strip()
            if not name or any(c in name for c in "<>\n "):
                return []
            self.name, self.i = name, j + 1
        r = _Gemma(body)
        r.i = self.i
        pending: str | None = None
        try:
            while True:
                r.ws()
                if r.i >= len(body) or body.startswith("}", r.i):
                    break
                pending = r.key()
                r.ws()
                if body.startswith(Q, r.i) and not self._closed(body, r.i):
                    break
                value = r.value()
                r.ws()
                if r.i >= len(body):
                    break  # a value at the end may go on
                if r.eat(","):
                    self.args[pending], pending, self.i = value, None, r.i
                elif body.startswith("}", r.i):
                    self.args[pending], pending, self.i = value, None, r.i
                    break
                else:
                    break
        except NotACall:
            pass
        return [Call(self.name, open_args(Call(self.name, dumps(self.args)), pending))]

    def _closed(self, body: str, at: int) -> bool:
        if self.q_at != at:
            self.q_at, self.q_pos = at, at + len(Q)
        if body.find(Q, self.q_pos) >= 0:
            return True
        self.q_pos = max(self.q_pos, len(body) - len(Q) + 1)
        return False


GEMMA4 = Syntax(
    think=(("<|channel>thought", "<channel|>"),),
    calls=(CallSyntax("<|tool_call>", parse_gemma4_call, close=("<tool_call|>",), partial=Gemma4SoFar),),
    # an empty thought block may follow the answer, a lone <|channel> or <channel|> too
    drop=("<|channel>", "<channel|>", "<tool_call|>"),
    think_anywhere=True,
    calls_in_reasoning=False,
)


def _gemma4_value(v: Any) -> str:
    """A value as Gemma 4's template writes one (``format_argument``)."""
    if isinstance(v, str):
        return Q + v + Q
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_gemma4_value(x)}" for k, x in sorted(v.items())) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_gemma4_value(x) for x in v) + "]"
    return json.dumps(v)


def gemma4_call(name: str, args: str) -> str:
    return f"<|tool_call>call:{name}{_gemma4_value(json.loads(args))}<tool_call|>"


FAMILIES = [
    Family("gemma4", "Gemma 4: <|channel>thought…<channel|>, <|tool_call>call:NAME{key:<|\"|>str<|\"|>}<tool_call|>",
           has("<|tool_call>call:"), GEMMA4, order=30, forced_call=gemma4_call, stops=("<turn|>",),
           examples=("google-gemma-4-31B-it.jinja", "google-gemma-4-31B-it-interleaved.jinja")),
    Family("gemma", "Gemma 2 / 3: no tool format of its own (a JSON call opening the answer), <end_of_turn>",
           has("<start_of_turn>"), GENERIC, order=900, forced_call=json_call, stops=("<end_of_turn>",),
           examples=("google-gemma-2-2b-it.jinja",)),
]
