"""JSON calls while they are still being written: the calls in a body so far, the
one in progress with its arguments so far as JSON text (:data:`PartialFn`), and the
prefix of the final arguments a stream may already send (:class:`ArgsPrefix`).
Whole JSON values and calls are :mod:`workers.formats.jsoncalls`'."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.jsoncalls import JsonEnd, args_object, call_from_obj, loads
from turnout.workers.formats.schema import ToolSet, dumps

PartialFn = Callable[[str, ToolSet], list[Call]]
"""Reads the body of a call that is still being written: the calls in it so far
(see ``CallSyntax.partial``): those already complete with their final
arguments, then the one in progress, once its name is known, with its arguments
so far as JSON text (a prefix: ``{"path":"a.txt","content":"hel``; "" before they
begin)."""

_WS = " \t\r\n"


def _key_string(key: str) -> re.Pattern[str]:
    return re.compile(r'"' + re.escape(key) + r'"\s*:\s*')


_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_NAME_KEY = re.compile(r'\{\s*("(?:[^"\\]|\\.)+")\s*:\s*', re.S)


class JsonCallsSoFar:
    """:data:`PartialFn` for a body of JSON call objects (one, an array of them, or
    several in a row), the keys named as :func:`call_from_obj` takes them. A call
    in progress is known once its name key and the name's closing quote are
    written before its arguments; its arguments are the text after the arguments
    key. Resumable: one instance per body, handed the same body grown; finished
    objects are found by a :class:`JsonEnd` that scans only what is new."""

    def __init__(self, name_keys: Iterable[str] = ("name",), args_keys: Iterable[str] = ("arguments", "parameters"),
                 id_keys: Iterable[str] = ("id",), *, name_keyed: bool = False) -> None:
        self.name_keyed = name_keyed  # a call is {NAME: {arguments}} (Apertus)
        self.keys = {"name_keys": tuple(name_keys), "args_keys": tuple(args_keys), "id_keys": tuple(id_keys)}
        self._name = [_key_string(k) for k in self.keys["name_keys"]]
        self._args = [_key_string(k) for k in self.keys["args_keys"]]
        self._ids = [_key_string(k) for k in self.keys["id_keys"]]
        self.done: list[Call] = []
        self.pos = 0
        self.obj: JsonEnd | None = None  # the object being written
        self.start = 0
        self.failed = False
        self.head: tuple[str, str, int] | None = None  # the current call's (name, id, arguments offset)

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        n = len(body)
        while not self.failed:
            if self.obj is None:
                i = self.pos
                if i == 0:  # a ```json fence around the calls is layout
                    s = body.lstrip(_WS)
                    if len(s) < 3 and "```".startswith(s):
                        return list(self.done)
                    if s.startswith("```"):
                        nl = body.find("\n", body.index("```"))
                        if nl < 0:
                            return list(self.done)
                        i = nl + 1
                while i < n and body[i] in _WS + "[,;":
                    i += 1
                self.pos = i
                if i >= n:
                    return list(self.done)
                if body[i] != "{":
                    self.failed = True  # not a call object: nothing more is streamed
                    break
                self.start, self.obj = i, JsonEnd(i)
            end = self.obj(body)
            if end is None:
                break
            try:
                obj = loads(body[self.start:end])
                if self.name_keyed:
                    if not isinstance(obj, dict) or len(obj) != 1:
                        raise NotACall("a call is {NAME: {arguments}}")
                    (name, args), = obj.items()
                    self.done.append(Call(name, dumps(args_object(args))))
                else:
                    self.done.append(call_from_obj(obj, **self.keys))
            except NotACall:
                self.failed = True
                break
            self.pos, self.obj, self.head = end, None, None
        if self.failed or self.obj is None:
            return list(self.done)
        if self.head is not None:  # its arguments have begun: only they grow
            name, call_id, at = self.head
            return [*self.done, Call(name, body[at:].lstrip(_WS), call_id)]
        current = self._current(body[self.start:])
        return [*self.done, current] if current is not None else list(self.done)

    def _current(self, obj: str) -> Call | None:
        if self.name_keyed:
            m = _NAME_KEY.match(obj)
            if m is None:
                return None
            name = loads(m.group(1))
            self.head = (name, "", self.start + m.end())
            return Call(name, obj[m.end():])
        # an OpenAI-shaped {"id", "type", "function": {"name", "arguments"}} has its keys one level down
        args_m = _first(self._args, obj)
        name_m = _first(self._name, obj)
        if name_m is None or (args_m is not None and args_m.start() < name_m.start()):
            return None  # the name is not known before the arguments
        sm = _STRING.match(obj, name_m.end())
        if sm is None:
            return None
        try:
            name = loads(sm.group(0))
        except NotACall:
            return None
        if not isinstance(name, str) or not name:
            return None
        head = obj if args_m is None else obj[: args_m.start()]
        call_id = ""
        id_m = _first(self._ids, head)
        if id_m is not None:
            im = _STRING.match(head, id_m.end())
            if im is not None:
                call_id = str(loads(im.group(0)))
        if args_m is not None:
            self.head = (name, call_id, self.start + args_m.end())
        return Call(name, "" if args_m is None else obj[args_m.end():].lstrip(_WS), call_id)


def _first(patterns: list[re.Pattern[str]], s: str) -> re.Match[str] | None:
    found = [m for m in (p.search(s) for p in patterns) if m is not None]
    return min(found, key=lambda m: m.start()) if found else None


class ArgsPrefix:
    """Streams a call's arguments while they are written: fed the arguments so far
    (a JSON text that grows), it returns what may be sent now, in the exact form
    of the final arguments (:func:`~workers.formats.schema.dumps`: compact, each
    key, string and number as ``json.dumps`` writes it), so that what it returns,
    concatenated, is a prefix of the final arguments.

    It returns text only up to the points where :func:`close_partial_json` would
    cut a call cut off by max_tokens: after an opening ``{``/``[``, a closed
    string value, a closed object or array, and a number or literal once the
    ``,`` after it is written. So a string is never sent before its closing quote,
    nor a key before its value is finished, and what was sent is also a prefix of
    the arguments of a call that is cut off. Arguments that are not a JSON object
    (a JSON string of one, ``null``) or that stop being valid JSON are not
    streamed further: the rest is sent with the final call. Linear: each
    character is looked at once (a string's body is skipped by a search)."""

    def __init__(self) -> None:
        self.sent: list[str] = []  # text returned so far
        self.pending: list[str] = []  # canonical text since the last safe point
        self.stack: list[str] = []
        self.sent_stack: list[str] = []  # the open containers of the text sent
        self.expect = "value"  # value | key | colon | after (a value ended: "," or a close)
        self.fresh = False  # a container was just opened (it may close at once)
        self.tok_start = -1  # raw offset of the string / number / literal being read
        self.tok_kind = ""  # '"' (string value), "k" (key), "0" (number or literal)
        self.esc = False
        self.pos = 0  # raw offset read up to
        self.seen = ""  # the raw text read (the next one must extend it)
        self.stopped = False  # not (or no longer) streamable
        self.closed = False  # the whole object was read

    @property
    def text(self) -> str:
        return "".join(self.sent)

    def closers(self) -> str:
        """What closes the text sent so far into a JSON value."""
        return "".join("}" if c == "{" else "]" for c in reversed(self.sent_stack))

    def feed(self, raw: str) -> str:
        if self.stopped or self.closed:
            return ""
        if not raw.startswith(self.seen):
            self.stopped = True
            return ""
        self.seen = raw
        out: list[str] = []
        try:
            self._scan(raw, out)
        except ValueError:
            self.stopped = True
        text = "".join(out)
        if text:
            self.sent.append(text)
        return text

    def _safe(self, out: list[str]) -> None:
        out.extend(self.pending)
        self.pending.clear()
        self.sent_stack = list(self.stack)

    def _token(self, raw: str, end: int) -> str:
        tok = raw[self.tok_start:end]
        self.tok_start, self.tok_kind = -1, ""
        return json.dumps(json.loads(tok, strict=False), ensure_ascii=False)

    def _open(self, ch: str, out: list[str]) -> None:
        self.pending.append(ch)
        self.stack.append(ch)
        self.expect, self.fresh = ("key" if ch == "{" else "value"), True
        self._safe(out)

    def _close(self, ch: str, out: list[str]) -> None:
        if not self.stack or ch != ("}" if self.stack[-1] == "{" else "]"):
            raise ValueError("unbalanced")
        self.pending.append(ch)
        self.stack.pop()
        self.expect, self.fresh = "after", False
        self._safe(out)
        if not self.stack:
            self.closed = True

    def _scan(self, raw: str, out: list[str]) -> None:
        i, n = self.pos, len(raw)
        pending = self.pending
        while i < n and not self.closed:
            kind = self.tok_kind
            if kind == '"' or kind == "k":
                if self.esc:
                    self.esc = False
                    i += 1
                    continue
                m = _QUOTE_OR_ESC.search(raw, i)
                if m is None:
                    i = n
                    break
                j = m.start()
                if raw[j] == "\\":
                    self.esc = True
                    i = j + 1
                    continue
                pending.append(self._token(raw, j + 1))
                i = j + 1
                if kind == "k":
                    self.expect = "colon"
                else:
                    self.expect = "after"
                    self._safe(out)
                continue
            ch = raw[i]
            if kind == "0":
                if ch not in _NUMBER_END:
                    i += 1
                    continue
                pending.append(self._token(raw, i))
                self.expect = "after"
            i += 1
            if ch in _WS:
                continue
            expect = self.expect
            if expect == "value":
                if not self.stack and ch != "{":
                    raise ValueError("arguments are not an object")
                if ch in "{[":
                    self._open(ch, out)
                elif ch == "]" and self.fresh:
                    self._close(ch, out)
                elif ch == '"':
                    self.tok_start, self.tok_kind, self.fresh = i - 1, '"', False
                elif ch in "-0123456789tfn":
                    self.tok_start, self.tok_kind, self.fresh = i - 1, "0", False
                else:
                    raise ValueError("not JSON")
            elif expect == "key":
                if ch == '"':
                    self.tok_start, self.tok_kind, self.fresh = i - 1, "k", False
                elif ch == "}" and self.fresh:
                    self._close(ch, out)
                else:
                    raise ValueError("not JSON")
            elif expect == "colon":
                if ch != ":":
                    raise ValueError("not JSON")
                pending.append(":")
                self.expect = "value"
            elif ch == ",":
                self._safe(out)
                pending.append(",")
                self.expect = "key" if self.stack[-1] == "{" else "value"
            elif ch in "}]":
                self._close(ch, out)
            else:
                raise ValueError("not JSON")
        self.pos = i


_QUOTE_OR_ESC = re.compile(r'["\\]')
_NUMBER_END = _WS + ",}]"


def json_calls_so_far(**keys: Any) -> Callable[[], PartialFn]:
    """``CallSyntax.partial`` for a body of JSON calls (:class:`JsonCallsSoFar`)."""
    return lambda: JsonCallsSoFar(**keys)


class HeadThenJson:
    """:data:`PartialFn` for calls written ``HEAD MARKER {arguments}`` one after
    another (Kimi K2's ``functions.NAME:N<|tool_call_argument_begin|>{…}``,
    Mistral's ``NAME[ARGS]{…}``): ``split`` cuts the body into the calls' texts,
    ``head`` reads (name, id) from a head, ``end`` is the text that may end a
    call's arguments. A call is known once its marker is written."""

    def __init__(self, marker: str, split: Callable[[str], list[str]], head: Callable[[str], tuple[str, str] | None],
                 parse: Callable[[str, ToolSet], list[Call]], end: str = "") -> None:
        self.marker, self.split, self.head, self.parse, self.end = marker, split, head, parse, end

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        parts = self.split(body)
        out: list[Call] = []
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            head, sep, args = part.partition(self.marker)
            if not sep:
                break
            named = self.head(head)
            if named is None:
                break
            if not last or (self.end and self.end in part):  # complete
                try:
                    out.extend(self.parse(part, tools))
                except NotACall:
                    break
                continue
            out.append(Call(named[0], args.lstrip(_WS), named[1]))
        return out
