"""MiniMax. M1: ``<tool_calls>`` around JSON calls, one a line. M2:
``<minimax:tool_call><invoke name="N"><parameter name="K">V</parameter></invoke>
</minimax:tool_call>``, ``<think>``. M3: every tool tag behind the namespace token
``]<]minimax[>[``, arguments as tags named after them, objects and arrays nested as
XML (``<item>`` per array element) and read by the tool's schema, ``<mm:think>``."""

from __future__ import annotations

import json
from typing import Any

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family, has
from turnout.workers.formats.jsoncalls import calls_from_json
from turnout.workers.formats.jsonpartial import JsonCallsSoFar
from turnout.workers.formats.schema import ToolSet, allows, coerce, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import invoke_parser, invoke_so_far

THINK = (("<think>", "</think>"),)

M1 = Syntax(
    think=THINK,
    calls=(CallSyntax("<tool_calls>", calls_from_json, close=("</tool_calls>",), partial=JsonCallsSoFar),),
    drop=("</tool_calls>",),
    calls_in_reasoning=False,
)

M2 = Syntax(
    think=THINK,
    calls=(CallSyntax("<minimax:tool_call>", invoke_parser(), close=("</minimax:tool_call>",),
                      partial=invoke_so_far()),),
    drop=("</minimax:tool_call>",),
    calls_in_reasoning=False,
)

NS = "]<]minimax[>["


def _kinds(schema: Any) -> set[str] | None:
    """The JSON types a schema admits, None for any."""
    if not isinstance(schema, dict) or not schema:
        return None
    out: set[str] = set()
    t = schema.get("type")
    if isinstance(t, str):
        out.add(t)
    elif isinstance(t, list):
        out.update(x for x in t if isinstance(x, str))
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            k = _kinds(sub)
            if k is None:
                return None
            out |= k
    if not out and "properties" in schema:
        out.add("object")
    if not out and "items" in schema:
        out.add("array")
    if not out and "enum" in schema:
        return None
    return out or None


class _Mismatch(Exception):
    """A value does not have the shape its schema wants (try the next alternative)."""


class _M3Args:
    """Reads M3's nested argument tags by the tool's schema, as llama.cpp's grammar
    for it does: a value that may be a string is the text up to its closing tag; an
    object is its members' tags; an array is ``<item>`` tags; anything else is JSON.
    Without a schema, nested tags make an object (or, ``<item>``, an array) and text
    is typed as :func:`~workers.formats.schema.coerce` types it."""

    def __init__(self, body: str) -> None:
        self.s = body
        self.pos = 0

    def _ws(self) -> None:
        s, i = self.s, self.pos
        while i < len(s) and s[i] in " \t\r\n":
            i += 1
        self.pos = i

    def _expect(self, lit: str) -> None:
        if not self.s.startswith(lit, self.pos):
            raise _Mismatch(lit)
        self.pos += len(lit)

    def _text_until(self, close: str) -> str:
        j = self.s.find(close, self.pos)
        if j < 0:
            raise _Mismatch(close)
        text = self.s[self.pos:j]
        self.pos = j + len(close)
        return text

    def members(self, schema: Any, close: str) -> dict[str, Any]:
        props = schema.get("properties") if isinstance(schema, dict) else None
        out: dict[str, Any] = {}
        while True:
            self._ws()
            if self.s.startswith(close, self.pos):
                self.pos += len(close)
                return out
            self._expect(NS + "<")
            j = self.s.find(">", self.pos)
            if j < 0 or self.s.startswith("/", self.pos):
                raise _Mismatch("a member tag")
            tag = self.s[self.pos:j]
            self.pos = j + 1
            sub = props.get(tag) if isinstance(props, dict) else None
            out[tag] = self.value(sub, f"{NS}</{tag}>")

    def items(self, schema: Any, close: str) -> list[Any]:
        item = schema.get("items") if isinstance(schema, dict) else None
        out: list[Any] = []
        while True:
            self._ws()
            if self.s.startswith(close, self.pos):
                self.pos += len(close)
                return out
            self._expect(NS + "<item>")
            out.append(self.value(item, NS + "</item>"))

    def value(self, schema: Any, close: str) -> Any:
        kinds = _kinds(schema)
        if kinds is None:
            if self.s.startswith(NS + "<item>", self.pos):
                return self.items(None, close)
            if self.s.startswith(NS + "<", self.pos) and not self.s.startswith(close, self.pos):
                return self.members(None, close)
            return coerce(schema, self._text_until(close))
        if "string" in kinds:
            return self._text_until(close)
        alternatives = [s for k in ("anyOf", "oneOf") for s in (schema.get(k) or [])]
        if alternatives:
            start = self.pos
            for alt in alternatives:
                try:
                    return self.value(alt, close)
                except _Mismatch:
                    self.pos = start
            raise _Mismatch("no alternative")
        if kinds & {"object", "array"}:
            start = self.pos
            self._ws()
            nested = self.s.startswith(NS + "<", self.pos) or self.s.startswith(close, self.pos)
            self.pos = start
            if not nested:  # written as JSON (turnout's forced-call grammar does)
                text = self._text_until(close).strip()
                try:
                    v = json.loads(text, strict=False)
                except ValueError:
                    raise _Mismatch(text) from None
                if not allows(schema, v):
                    raise _Mismatch(text)
                return v
        if "object" in kinds and isinstance(schema.get("properties"), dict) and schema["properties"]:
            return self.members(schema, close)
        if "array" in kinds:
            return self.items(schema, close)
        text = self._text_until(close).strip()
        try:
            v = json.loads(text)
        except ValueError:
            raise _Mismatch(text) from None
        if not allows(schema, v):
            raise _Mismatch(text)
        return v


def parse_m3(body: str, tools: ToolSet) -> list[Call]:
    """The inside of ``]<]minimax[>[<tool_call>…]<]minimax[>[</tool_call>``."""
    r = _M3Args(body)
    calls: list[Call] = []
    try:
        while True:
            r._ws()
            if r.pos >= len(body):
                break
            r._expect(NS + '<invoke name="')
            name = r._text_until('">')
            if not name.strip() or "<" in name:
                raise _Mismatch("a function name")
            args = r.members(tools.schemas.get(name), NS + "</invoke>")
            calls.append(Call(name, dumps(args)))
    except _Mismatch as e:
        raise NotACall(f"not a MiniMax M3 call: {e}") from None
    if not calls:
        raise NotACall("no invoke")
    return calls


M3 = Syntax(
    think=(("<mm:think>", "</mm:think>"),),
    calls=(CallSyntax(NS + "<tool_call>", parse_m3, close=(NS + "</tool_call>",)),),
    drop=(NS + "</tool_call>",),
    calls_in_reasoning=False,
)


def _scalar(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def m1_call(name: str, args: str) -> str:
    return f'<tool_calls>\n{{"name": "{name}", "arguments": {args}}}\n</tool_calls>'


def m2_call(name: str, args: str) -> str:
    params = "".join(f'<parameter name="{k}">{_scalar(v)}</parameter>\n' for k, v in json.loads(args).items())
    return f'<minimax:tool_call>\n<invoke name="{name}">\n{params}</invoke>\n</minimax:tool_call>'


def _m3_xml(v: Any) -> str:
    """A value as M3's template writes it (its ``to_xml`` macro)."""
    if isinstance(v, dict):
        return "".join(f"{NS}<{k}>{_m3_xml(x)}{NS}</{k}>" for k, x in v.items() if x is not None)
    if isinstance(v, list):
        return "".join(f"{NS}<item>{_m3_xml(x)}{NS}</item>" for x in v)
    return _scalar(v)


def m3_call(name: str, args: str) -> str:
    inner = "".join(f"{NS}<{k}>{_m3_xml(v)}{NS}</{k}>" for k, v in json.loads(args).items() if v is not None)
    return f'{NS}<tool_call>\n{NS}<invoke name="{name}">{inner}{NS}</invoke>\n{NS}</tool_call>'


FAMILIES = [
    Family("minimax-m3", "MiniMax M3: ]<]minimax[>[<tool_call>, <invoke name=…>, nested argument tags, <mm:think>",
           has(NS, "<invoke name="), M3, order=20, forced_call=m3_call, stops=("[e~[",),
           examples=("MiniMax-M3.jinja",)),
    Family("minimax-m2", "MiniMax M2: <minimax:tool_call><invoke name=…><parameter name=…>, <think>",
           has("<minimax:tool_call>"), M2, order=25, forced_call=m2_call, stops=("[e~[",),
           examples=("MiniMax-M2.jinja",)),
    Family("minimax-m1", "MiniMax M1: <tool_calls> around JSON calls, one a line",
           has("<tool_calls>", "<beginning_of_sentence>"), M1, order=60, forced_call=m1_call, stops=("<end_of_sentence>",),
           examples=("MiniMax-M1.jinja",)),
]
