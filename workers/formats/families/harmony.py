"""Families whose answer is a sequence of addressed messages, each a header, a
body and an end marker: OpenAI's harmony (gpt-oss) and muse-glimmer.

harmony: ``[<|start|>assistant][ to=R]<|channel|>C[ to=R][ <|constrain|>T]<|message|>
BODY<|end|>`` (or ``<|call|>`` after a call, ``<|return|>`` at the end). Channel
``analysis`` is reasoning, ``final`` and ``commentary`` are the answer; a message
to ``functions.NAME`` is a call whose body is its JSON arguments; a message to any
other recipient (``python``, ``container.exec``: harmony's built-in tools) is
dropped. The prompt ends with ``<|start|>assistant``, so the first header starts
at ``<|channel|>`` or `` to=``.

muse-glimmer: ``<|start|>assistant to=R<|message|>BODY<|eom|>`` (``<|eot|>`` ends
the turn): ``self`` is reasoning, ``user`` (or none) the answer, anything else a
tool, the body an ``<atem:function_calls>`` block.

:class:`ChannelReader` reads both, linearly: a header is buffered until its
``<|message|>``, a reasoning or answer body streams as it comes (holding back only
what may be the start of a marker), a call body is parsed once it ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turnout.workers.formats.events import Call, Event, NotACall, Text, Thinking
from turnout.workers.formats.families import Family, StreamReader, has
from turnout.workers.formats.jsoncalls import args_object, loads
from turnout.workers.formats.reader import finished_call
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import Syntax, find_first, holdback
from turnout.workers.formats.xmlargs import invoke_parser

HEADER_MAX = 512  # a "header" longer than this without <|message|> is text, not a header

# (kind, tool): kind is "reasoning", "content", "call" (to tool) or "drop"
Classify = Callable[[str], tuple[str, str]]
ParseBody = Callable[[str, str, ToolSet], list[Call]]


@dataclass(frozen=True, slots=True)
class Channels:
    """A family's messages. ``starts``: markers that begin a header. ``first``:
    more markers that may begin the first one (the prompt ended inside it, e.g.
    after ``<|start|>assistant``). ``ends``: markers that end a body (consumed);
    a body also ends where a header ``starts``. ``classify`` reads a header,
    ``parse`` a call's body (``(tool, body, tools)``)."""

    starts: tuple[str, ...]
    first: tuple[str, ...]
    ends: tuple[str, ...]
    classify: Classify
    parse: ParseBody
    message: str = "<|message|>"


_ROLE = re.compile(r"^<\|start\|>\w*")


class ChannelReader(StreamReader):
    """Feed a harmony-like model's output; get events (see the module docstring).
    Options as :class:`~workers.formats.reader.Reader`'s."""

    def __init__(self, channels: Channels, tools: ToolSet | None = None, *, reasoning_open: str = "",
                 raw_reasoning: bool = False, tools_enabled: bool = True) -> None:
        self.ch = channels
        self.tools = tools or ToolSet()
        self.raw = raw_reasoning
        self.tools_enabled = tools_enabled
        self._buf = ""
        self._mode = "between"  # between | header | body
        self._first = True
        self._kind = ""
        self._tool = ""
        self._header = ""
        self._scanned = 0
        self._pending = ""  # raw reasoning opener, shown with the first text
        self._boundary = (*channels.ends, *channels.starts)
        self._committed = False
        if reasoning_open:
            self._mode, self._kind, self._first = "body", "reasoning", False
            if self.raw:
                self._pending = reasoning_open

    # ------------------------------------------------------------------ api

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        out: list[Event] = []
        self._run(out, final=False)
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        self._run(out, final=True)
        return out

    def partial_calls(self) -> list[Call]:
        """The call being written (see :meth:`~workers.formats.reader.Reader.partial_calls`):
        its name is in its header, its arguments so far are its body (JSON)."""
        if self._mode != "body" or self._kind != "call" or (self.tools and self._tool not in self.tools.schemas):
            return []
        buf = self._buf
        body = buf[: len(buf) - holdback(buf, self._boundary)].lstrip()
        return [Call(self._tool, body)] if body.startswith("{") else []

    def commit(self) -> None:
        if self._mode == "body" and self._kind == "call":
            self._committed = True

    # ------------------------------------------------------------------ engine

    def _text(self, out: list[Event], text: str) -> None:
        if not text:
            return
        if self._pending:
            text, self._pending = self._pending + text, ""
        if out and isinstance(out[-1], Text):
            out[-1].text += text
        else:
            out.append(Text(text))

    def _thinking(self, out: list[Event], text: str) -> None:
        if not text:
            return
        if self.raw:
            self._text(out, text)
        elif out and isinstance(out[-1], Thinking):
            out[-1].text += text
        else:
            out.append(Thinking(text))

    def _run(self, out: list[Event], final: bool) -> None:
        while True:
            before = (self._mode, len(self._buf), self._scanned)
            if self._mode == "between":
                self._between(final)
            elif self._mode == "header":
                self._read_header(out, final)
            else:
                self._body(out, final)
            if (self._mode, len(self._buf), self._scanned) == before:
                return

    def _between(self, final: bool) -> None:
        """Before a message: its header, or (a model that skipped it) its text."""
        heads = (*self.ch.first, *self.ch.starts) if self._first else self.ch.starts
        markers = (*heads, *self.ch.ends)
        while True:
            buf = self._buf
            if not buf:
                return
            mk = next((m for m in markers if buf.startswith(m)), "")
            if mk in self.ch.ends and mk:
                self._buf = buf[len(mk):]  # a stray end marker
                continue
            if mk:
                self._mode, self._scanned = "header", 0
                return
            if not final and any(m.startswith(buf) for m in markers):
                return  # may still become a marker
            if buf[0] in " \t\r\n":
                # whitespace between messages is layout; the last character of it
                # may still begin " to=" (at the start)
                n = len(buf) - len(buf.lstrip(" \t\r\n"))
                self._buf = buf[max(1, n - 1):]
                continue
            self._first = False
            self._mode, self._kind, self._header = "body", "content", ""
            return

    def _read_header(self, out: list[Event], final: bool) -> None:
        buf = self._buf
        i = buf.find(self.ch.message, self._scanned)
        if i < 0:
            self._scanned = max(0, len(buf) - len(self.ch.message) + 1)
            if len(buf) > HEADER_MAX:
                self._first = False
                self._mode, self._kind, self._header = "body", "content", ""
            elif final:
                self._buf = ""  # a header cut short says nothing
            return
        self._first = False
        self._header = buf[:i]
        self._buf = buf[i + len(self.ch.message):]
        kind, tool = self.ch.classify(self._header)
        if kind == "call" and not self.tools_enabled:
            kind = "drop"  # llama.cpp consumes calls nobody offered
        self._mode, self._kind, self._tool, self._scanned = "body", kind, tool, 0
        if kind == "reasoning" and self.raw:
            self._pending += _ROLE.sub("", self._header) + self.ch.message

    def _body(self, out: list[Event], final: bool) -> None:
        buf = self._buf
        i, mk = find_first(buf, self._boundary, self._scanned)
        streaming = self._kind in ("reasoning", "content")
        if i < 0:
            if streaming:
                keep = 0 if final else holdback(buf, self._boundary)
                self._emit(out, buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
                if final:
                    self._pending = ""
                return
            self._scanned = max(0, len(buf) - max(map(len, self._boundary)) + 1)
            if not final:
                return
            i, mk = len(buf), ""
        body = buf[:i]
        consumed = mk in self.ch.ends
        self._buf = buf[i + len(mk):] if consumed else buf[i:]
        if streaming:
            self._emit(out, body)
            if self._kind == "reasoning" and self.raw and consumed:
                self._text(out, mk)
            self._pending = ""
        elif self._kind == "call":
            committed, self._committed = self._committed, False
            try:
                out.extend(self.ch.parse(self._tool, body, self.tools))
            except NotACall:
                if committed:  # announced: made with its finished arguments
                    out.append(finished_call(Call(self._tool, body.lstrip())))
                else:
                    self._text(out, body)
        self._mode, self._kind, self._scanned = "between", "", 0

    def _emit(self, out: list[Event], text: str) -> None:
        if self._kind == "reasoning":
            self._thinking(out, text)
        else:
            self._text(out, text)


# ---------------------------------------------------------------------- harmony

_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_TO = re.compile(r"\bto=([^\s<]+)")
_NOT_TOOLS = ("assistant", "user", "all")


def harmony_kind(header: str) -> tuple[str, str]:
    channels = _CHANNEL.findall(header)
    recipient = next((r for r in reversed(_TO.findall(header)) if r not in _NOT_TOOLS), "")
    if recipient.startswith("functions."):
        return "call", recipient[len("functions."):]
    if recipient:
        return "drop", recipient  # a built-in tool (python, browser, container)
    if channels and channels[-1] == "analysis":
        return "reasoning", ""
    return "content", ""


def harmony_args(tool: str, body: str, tools: ToolSet) -> list[Call]:
    s = body.strip()
    if not s:
        return [Call(tool, "{}")]
    return [Call(tool, dumps(args_object(loads(s))))]


HARMONY = Channels(
    starts=("<|start|>", "<|channel|>"),
    first=(" to=", "<|message|>"),
    ends=("<|end|>", "<|return|>", "<|call|>"),
    classify=harmony_kind,
    parse=harmony_args,
)


def harmony_reader(tools: ToolSet, **options: Any) -> ChannelReader:
    return ChannelReader(HARMONY, tools, **options)


def harmony_call(name: str, args: str) -> str:
    """A call as gpt-oss writes it after the prompt's ``<|start|>assistant``."""
    return f" to=functions.{name}<|channel|>commentary <|constrain|>json<|message|>{args}<|call|>"


# ------------------------------------------------------------------ muse-glimmer


def muse_kind(header: str) -> tuple[str, str]:
    recipients = _TO.findall(header)
    recipient = recipients[-1] if recipients else ""
    if recipient == "self":
        return "reasoning", ""
    if recipient in ("", "user"):
        return "content", ""
    return "call", recipient


_ATEM = invoke_parser("atem:")


def muse_calls(tool: str, body: str, tools: ToolSet) -> list[Call]:
    if not body.strip().startswith("<atem:function_calls>"):
        raise NotACall("no <atem:function_calls>")
    calls: list[Call] = _ATEM(body, tools)
    return calls


MUSE = Channels(
    starts=("<|start|>",),
    first=(" to=", "<|message|>"),
    ends=("<|eom|>", "<|eot|>"),
    classify=muse_kind,
    parse=muse_calls,
)


def muse_reader(tools: ToolSet, **options: Any) -> ChannelReader:
    return ChannelReader(MUSE, tools, **options)


def muse_call(name: str, args: str) -> str:
    params = "".join(
        f'<atem:parameter name="{k}">{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}'
        "</atem:parameter>\n"
        for k, v in json.loads(args).items()
    )
    return (f' to={name}<|message|><atem:function_calls>\n<atem:invoke name="{name}">\n{params}'
            "</atem:invoke>\n</atem:function_calls><|eot|>")


FAMILIES = [
    # ``syntax`` only names the reasoning markers, so that formats.reasoning_open
    # finds a prefilled analysis message; the output is read by the reader.
    Family("gpt-oss", "OpenAI gpt-oss (harmony): <|channel|>analysis|commentary|final, to=functions.NAME",
           has("<|channel|>"), Syntax(think=(("<|channel|>analysis<|message|>", "<|end|>"),)),
           reader=harmony_reader, order=10, forced_call=harmony_call, stops=("<|return|>", "<|call|>"),
           examples=("openai-gpt-oss-120b.jinja",)),
    Family("muse-glimmer", "muse-glimmer: <|start|>assistant to=self|user|TOOL<|message|>, <atem:function_calls>",
           has("<atem:function_calls>", "<|eom|>"), Syntax(think=((" to=self<|message|>", "<|eom|>"),)),
           reader=muse_reader, order=10, forced_call=muse_call, stops=("<|eot|>",),
           examples=("muse-glimmer.jinja",)),
]
