"""Liquid LFM2 / LFM2.5: ``<|tool_call_start|>[name(arg=value, …), …]<|tool_call_end|>``,
calls written as Python (strings in either quote, ``True``/``None``; JSON's
``true``/``null`` and JSON objects as well; dotted names), ``<think>`` reasoning."""

from __future__ import annotations

import json
import re
from typing import Any

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import open_args

_NAME = re.compile(r"[A-Za-z_][\w.\-]*")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_LITERALS = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0", "\\": "\\", "'": "'", '"': '"',
            "/": "/", "\n": ""}
_MAX_DEPTH = 64


class _Py:
    """A recursive-descent reader of the Python-call subset these models write."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def fail(self, what: str) -> NotACall:
        return NotACall(f"expected {what} at {self.i}: {self.s[self.i:self.i + 20]!r}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def eat(self, c: str) -> bool:
        self.ws()
        if self.s.startswith(c, self.i):
            self.i += len(c)
            return True
        return False

    def name(self) -> str:
        self.ws()
        m = _NAME.match(self.s, self.i)
        if not m:
            raise self.fail("a name")
        self.i = m.end()
        return m.group(0)

    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        bracketed = self.eat("[")
        out = [self.call()]
        while self.eat(","):
            out.append(self.call())
        if bracketed and not self.eat("]"):
            raise self.fail("]")
        self.ws()
        if self.i != len(self.s):
            raise self.fail("the end of the calls")
        return out

    def call(self) -> tuple[str, dict[str, Any]]:
        name = self.name()
        if not self.eat("("):
            raise self.fail("(")
        args: dict[str, Any] = {}
        if not self.eat(")"):
            while True:
                key = self.name()
                if not self.eat("="):
                    raise self.fail("=")
                args[key] = self.value(0)
                if self.eat(")"):
                    break
                if not self.eat(","):
                    raise self.fail(", or )")
                if self.eat(")"):  # a trailing comma
                    break
        return name, args

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail("a shallower value")
        self.ws()
        c = self.peek()
        if c in "\"'":
            return self.string(c)
        if c in "[(":
            close = "]" if c == "[" else ")"
            self.i += 1
            items: list[Any] = []
            while not self.eat(close):
                items.append(self.value(depth + 1))
                if not self.eat(","):
                    if not self.eat(close):
                        raise self.fail(close)
                    break
            return items
        if c == "{":
            self.i += 1
            obj: dict[str, Any] = {}
            while not self.eat("}"):
                key = self.value(depth + 1)
                if isinstance(key, (dict, list)) or not self.eat(":"):
                    raise self.fail("a key and :")
                obj[key if isinstance(key, str) else json.dumps(key)] = self.value(depth + 1)
                if not self.eat(","):
                    if not self.eat("}"):
                        raise self.fail("}")
                    break
            return obj
        m = _NUMBER.match(self.s, self.i)
        if m:
            self.i = m.end()
            text = m.group(0)
            return float(text) if any(ch in text for ch in ".eE") else int(text)
        m = _NAME.match(self.s, self.i)
        if m and m.group(0) in _LITERALS:
            self.i = m.end()
            return _LITERALS[m.group(0)]
        raise self.fail("a value")

    def string(self, quote: str) -> str:
        s, i = self.s, self.i + 1
        out: list[str] = []
        while i < len(s):
            c = s[i]
            if c == quote:
                self.i = i + 1
                return "".join(out)
            if c == "\\" and i + 1 < len(s):
                e = s[i + 1]
                if e in "ux":
                    n = 4 if e == "u" else 2
                    code = s[i + 2:i + 2 + n]
                    if len(code) == n and all(h in "0123456789abcdefABCDEF" for h in code):
                        out.append(chr(int(code, 16)))
                        i += 2 + n
                        continue
                if e in _ESCAPES:
                    out.append(_ESCAPES[e])
                else:
                    out.append(c + e)  # Python keeps an unknown escape as written
                i += 2
                continue
            out.append(c)
            i += 1
        raise self.fail(f"a closing {quote}")


def parse_python_calls(body: str, tools: ToolSet) -> list[Call]:
    """``[name(arg=value, …), …]`` as calls."""
    if not body.strip():
        raise NotACall("no call")
    return [Call(name, dumps(args)) for name, args in _Py(body).calls()]


_QUOTE_OR_ESC = {q: re.compile(rf"[{q}\\]") for q in "\"'"}


class PythonCallsSoFar:
    """The calls so far (``CallSyntax.partial``): a call is known once ``name(``
    is written; an argument counts once the ``,`` or ``)`` after its value is.
    One per body (handed the same body, grown): reading resumes after the last
    finished argument, and a string being written is not read until it closes."""

    def __init__(self) -> None:
        self.done: list[Call] = []
        self.i = -1  # where to resume: after "[", a finished argument or call
        self.name = ""  # the call being written
        self.args: dict[str, Any] = {}
        self.str_at = self.str_pos = -1  # the string being written: its quote, how far it was searched

    def _closed(self, body: str, at: int) -> bool:
        """Is the string whose quote is at ``at`` closed? Searches only what is new."""
        q = body[at]
        if self.str_at != at:
            self.str_at, self.str_pos = at, at + 1
        j = self.str_pos
        while True:
            m = _QUOTE_OR_ESC[q].search(body, j)
            if m is None:
                j = len(body)
                break
            k = m.start()
            if body[k] == q:
                return True
            if k + 1 >= len(body):
                j = k  # an escape whose character is still coming
                break
            j = k + 2
        self.str_pos = j
        return False

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        p = _Py(body)
        if self.i < 0:
            if not body.strip():
                return []
            p.eat("[")
            self.i = p.i
        p.i = self.i
        pending: str | None = None
        try:
            while True:
                if not self.name:
                    if self.done:
                        p.eat(",")
                    p.ws()
                    m = _NAME.match(body, p.i)
                    if m is None:
                        break
                    p.i = m.end()
                    if not p.eat("("):
                        break
                    self.name, self.args, self.i = m.group(0), {}, p.i
                    if p.eat(")"):
                        self._end_call(p)
                    continue
                p.ws()
                km = _NAME.match(body, p.i)
                if km is None:
                    break
                p.i = km.end()
                if not p.eat("="):
                    break
                pending = km.group(0)
                p.ws()
                q = p.peek()
                if q in ("'", '"') and not self._closed(body, p.i):
                    break  # a string being written
                value = p.value(0)
                p.ws()
                if p.i >= len(body):
                    break  # a value at the end may go on
                if p.eat(","):
                    self.args[pending], pending, self.i = value, None, p.i
                    if p.eat(")"):  # a trailing comma
                        self._end_call(p)
                elif p.eat(")"):
                    self.args[pending], pending = value, None
                    self._end_call(p)
                else:
                    break
        except NotACall:
            pass
        if not self.name:
            return list(self.done)
        return [*self.done, Call(self.name, open_args(Call(self.name, dumps(self.args)), pending))]

    def _end_call(self, p: _Py) -> None:
        self.done.append(Call(self.name, dumps(self.args)))
        self.name, self.args, self.i = "", {}, p.i


LFM = Syntax(
    think=(("<think>", "</think>"),),
    calls=(CallSyntax("<|tool_call_start|>", parse_python_calls, close=("<|tool_call_end|>",),
                      partial=PythonCallsSoFar),),
    drop=("<|tool_call_end|>",),
    calls_in_reasoning=False,
)


def _py(v: Any) -> str:
    """A value the way the model writes it back (JSON strings are Python strings too)."""
    return json.dumps(v, ensure_ascii=False)


def lfm_call(name: str, args: str) -> str:
    inner = ", ".join(f"{k}={_py(v)}" for k, v in json.loads(args).items())
    return f"<|tool_call_start|>[{name}({inner})]<|tool_call_end|>"


def _is_lfm(template: str) -> bool:
    # LFM2 lists tools between <|tool_list_start|> markers; LFM2.5 after "List of tools: ["
    return "<|tool_list_start|>" in template or ("List of tools: [" in template and "<|im_start|>" in template)


FAMILIES = [
    Family("lfm2", "Liquid LFM2 / LFM2.5: <|tool_call_start|>[name(arg=value)]<|tool_call_end|>, <think>",
           _is_lfm, LFM, order=30, forced_call=lfm_call, stops=("<|im_end|>",),
           examples=("LFM2-8B-A1B.jinja", "LFM2.5-8B-A1B.jinja", "LFM2.5-Instruct.jinja")),
]
