"""The streaming reader: a model's output in, text / thinking / tool calls out.

A family's output is described by a :class:`~workers.formats.syntax.Syntax`: the markers of its reasoning
blocks, the markers that open (and close) its tool calls with a function that
reads a complete call body, and markers that are dropped. :class:`Reader` applies
one to text as it streams:

* Text streams as it comes; only a suffix that could be the beginning of a marker
  is held back (so a marker split anywhere, even one byte at a time, is found).
* Reasoning streams as :class:`Thinking` (or, with ``raw_reasoning``, stays in the
  text with its markers, as llama.cpp's ``reasoning_format = none`` does).
* A tool call is buffered from its opener until it is complete, then read by the
  family's parser into :class:`Call` events; a body that does not parse is given
  back as text (markers included), never as a broken call.
* While a call is being written, :meth:`Reader.partial_calls` tells what is known
  of it so far (its name, the model's id, its arguments so far as JSON text), for
  families whose calls name their function before their arguments. A consumer
  that sends the call's start on the strength of that calls
  :meth:`Reader.commit`: the call is then made whatever follows (a body that
  turns out not to parse makes the call with its finished arguments, never text).

Work is linear in the output: every scan resumes where the last one stopped, and a
call body is parsed once, when it is complete.

Families whose output is not "markers in text" (harmony's channels, functionary's
``>>>recipient``) have readers of their own with the same ``feed``/``finish``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from turnout.workers.formats.events import Call, Event, NotACall, Text, Thinking
from turnout.workers.formats.jsoncalls import close_partial_json, json_complete, json_end, json_scan
from turnout.workers.formats.jsonpartial import PartialFn
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax, find_first, holdback, unsettled

_FENCE = "```json"


@dataclass(slots=True)
class _State:
    mode: str = "start"  # start | text | think | strip | call
    think_close: str = ""
    think_open: str = ""
    call: CallSyntax | None = None
    opener: str = ""  # the marker text that opened the current call
    emitted_text: bool = False
    pending_text: list[str] = field(default_factory=list)
    fence_checked: bool = False  # json_response: the answer's start was looked at for a ```json fence
    fence: bool = False  # json_response: a ```json fence is open (its closing ``` is dropped)


class Reader:
    """Feed a model's output; get events. See the module docstring.

    Options: ``tools`` (the offered tools; argument types come from them),
    ``reasoning_open``: the prompt ends inside a reasoning block (the opener's
    text, e.g. ``"<think>\\n"``), ``raw_reasoning``: keep reasoning as text.
    ``tools_enabled``: False when no tools were offered: calls are not looked for.
    ``json_response``: the request asked for a JSON answer (a response format): a
    ```json fence around the answer is layout, not answer (llama.cpp unwraps it).
    """

    def __init__(self, syntax: Syntax, tools: ToolSet | None = None, *, reasoning_open: str = "",
                 raw_reasoning: bool = False, tools_enabled: bool = True,
                 json_response: bool = False) -> None:
        self.syntax = syntax
        self.tools = tools or ToolSet()
        self.raw = raw_reasoning
        self._raw_marks = raw_reasoning and syntax.raw_markers  # reasoning markers kept in the text
        self.json_response = json_response
        self._calls = syntax.calls if tools_enabled else ()
        self._openers = tuple(c.open for c in self._calls)
        self._mid_openers = tuple(c.open for c in self._calls if not c.at_start_only)
        # a stray call marker is dropped only where calls are read
        call_marks = {m for c in syntax.calls for m in (c.open, *c.close, *c.ends)}
        self._drop = syntax.drop if tools_enabled else tuple(m for m in syntax.drop if m not in call_marks)
        self._think_opens = tuple(o for o, _ in syntax.think)
        self._st = _State()
        self._buf = ""
        self._partial: PartialFn | None = None
        self._partial_at = -1  # the body length partial_calls last read
        self._partial_last: list[Call] = []
        self._committed = False
        # The answer is grammar-forced to be a call (set by the writer): a bare JSON
        # call cut off is then still made; otherwise an answer that opens with JSON
        # is a call only when that JSON is whole (a base model imitating an earlier
        # call and cut by a stop string answered in text).
        self.forced_call = False
        if reasoning_open:
            pair = next(((o, c) for o, c in syntax.think if reasoning_open.strip().startswith(o.strip())), None)
            if pair is None and syntax.think:
                pair = syntax.think[0]
            if pair is not None:
                self._st.mode = "think"
                self._st.think_open, self._st.think_close = reasoning_open, pair[1]
                if self._raw_marks:
                    self._st.pending_text.append(reasoning_open)
                elif not self.raw:
                    after = reasoning_open.strip()[len(pair[0].strip()):].strip()
                    self._buf = next((p for p in syntax.think_preludes if after and p.strip() == after), "")

    # ------------------------------------------------------------------ api

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        if self._st.mode == "call":
            self._call_feed(text, out, final=False)
        else:
            self._buf += text
        self._run(out, final=False)
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        self._run(out, final=True)
        if self._st.mode == "call":
            self._call_feed("", out, final=True)
            self._run(out, final=True)
        if self._buf:
            self._emit_text(out, self._buf)
            self._buf = ""
        return out

    def partial_calls(self) -> list[Call]:
        """The calls of the call body being written, so far: complete ones with
        their final arguments, then the one in progress, once its name is known,
        with its arguments so far as JSON text (a prefix, "" before they begin;
        converted formats (XML parameters, Python calls) give their finished
        parameters and the name of the one being written: ``{"a":1,"b":``). The
        model's id where it writes one. Empty when no call is being written or
        the family does not name a call before its arguments. A name that is not
        an offered tool is not reported. Same answer however the output was split."""
        if self._st.mode != "call" or self._partial is None:
            return []
        if len(self._body) != self._partial_at:
            self._partial_at = len(self._body)
            calls = self._partial(self._body, self.tools)
            if self.tools:
                known = [c.name in self.tools.schemas for c in calls]
                calls = calls[: known.index(False)] if False in known else calls
            self._partial_last = calls
        return list(self._partial_last)

    def in_bare_call(self) -> bool:
        """Is the call being read a bare JSON answer (no marker opened it)?"""
        return self._st.mode == "call" and self._st.call is not None and self._st.call.at_start_only

    def commit(self) -> None:
        """The call being written was announced (its start sent): it will be made,
        even if its body turns out not to parse (then with the finished arguments
        of the calls :meth:`partial_calls` last reported)."""
        if self._st.mode == "call":
            self._committed = True

    # ------------------------------------------------------------------ engine

    def _run(self, out: list[Event], final: bool) -> None:
        while self._st.mode != "call":
            before = (self._st.mode, len(self._buf))
            self._step(out, final)
            if (self._st.mode, len(self._buf)) == before:
                return

    def _emit_text(self, out: list[Event], text: str) -> None:
        if not text:
            return
        st = self._st
        if st.pending_text:
            text = "".join(st.pending_text) + text
            st.pending_text.clear()
        st.emitted_text = True
        if out and isinstance(out[-1], Text):
            out[-1].text += text
        else:
            out.append(Text(text))

    def _emit_thinking(self, out: list[Event], text: str) -> None:
        if not text:
            return
        if self.raw:
            self._emit_text(out, text)
            return
        if out and isinstance(out[-1], Thinking):
            out[-1].text += text
        else:
            out.append(Thinking(text))

    def _step(self, out: list[Event], final: bool) -> None:
        mode = self._st.mode
        if mode == "start":
            self._step_start(out, final)
        elif mode == "text":
            self._step_text(out, final)
        elif mode == "think":
            self._step_think(out, final)
        elif mode == "strip":
            # the newlines between a reasoning block and the answer are not answer
            if not self.raw:
                self._buf = self._buf.lstrip(self.syntax.strip_after_think)
            if self._buf or final:
                self._st.mode = "text"

    def _step_start(self, out: list[Event], final: bool) -> None:
        """Before any text: a reasoning block, a stray reasoning close (an empty
        block whose opener the model skipped) or a start-only call may begin here."""
        s = self._buf.lstrip()
        if not s:
            if final:
                self._st.mode = "text"
            return
        candidates = (*self._think_opens, *(c for _, c in self.syntax.think), *self._openers)
        if not final and any(len(s) < len(m) and m.startswith(s) for m in candidates):
            return  # could still become one of them
        for o, c in self.syntax.think:
            if s.startswith(o):
                self._buf = s[len(o):]
                self._st.mode, self._st.think_open, self._st.think_close = "think", o, c
                if self._raw_marks:
                    self._st.pending_text.append(o)
                return
        for _, c in self.syntax.think:
            if s.startswith(c):
                self._buf = s[len(c):]
                self._st.mode = "strip"
                return
        for call in self._calls:
            if call.at_start_only and s.startswith(call.open):
                self._open_call(call, s, 0, out, final)
                return
        self._st.mode = "text"

    def _open_call(self, call: CallSyntax, buf: str, i: int, out: list[Event], final: bool) -> None:
        """Start buffering a call; the text after the opener is its body so far."""
        st = self._st
        st.mode, st.call, st.opener = "call", call, call.open
        self._markers = (*call.close, *call.ends)
        self._hold = max((len(m) for m in self._markers), default=1) - 1
        if call.scan is not None:
            self._complete: Callable[[str], int | None] | None = call.scan()
        elif call.complete is json_complete:
            self._complete = json_scan()
        else:
            self._complete = call.complete
        rest = buf[i:] if call.keep_open else buf[i + len(call.open):]
        self._buf = ""
        # the body starts with the opener when it keeps it; an `ends` marker may equal it
        self._body = rest[: len(call.open)] if call.keep_open else ""
        self._searched = len(self._body)
        self._partial = call.partial() if call.partial is not None else None
        self._partial_at, self._partial_last, self._committed = -1, [], False
        self._call_feed(rest[len(self._body):], out, final)

    def _text_markers(self) -> tuple[str, ...]:
        ms = (*self._mid_openers, *self._drop)
        if self.syntax.think_anywhere:
            ms = (*ms, *self._think_opens)
        return ms

    def _step_text(self, out: list[Event], final: bool) -> None:
        st = self._st
        if self.json_response and not st.fence_checked:
            s = self._buf.lstrip()
            if not final and (not s or (len(s) < len(_FENCE) and _FENCE.startswith(s))):
                return  # could still be the fence
            # the answer's wrapper (<|START_TEXT|>, <response>) comes off first
            if not s or not any(s.startswith(d) or (not final and d.startswith(s)) for d in self._drop):
                st.fence_checked = True
                if s.startswith(_FENCE):
                    self._buf, st.fence = s[len(_FENCE):], True
        buf = self._buf
        markers = self._text_markers()
        if st.fence:
            markers = (*markers, "```")
        i, mk = find_first(buf, markers)
        if i < 0:
            keep = 0 if final else holdback(buf, markers)
            if len(buf) > keep:
                self._emit_text(out, buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
            return
        self._emit_text(out, buf[:i])
        if not final and unsettled(buf, i, markers):
            self._buf = buf[i:]
            return
        if mk in self._drop or (st.fence and mk == "```"):
            st.fence = st.fence and mk != "```"
            self._buf = buf[i + len(mk):]
            return
        call = next((c for c in self._calls if c.open == mk), None)
        if call is not None:
            self._open_call(call, buf, i, out, final)
            return
        pair = next(p for p in self.syntax.think if p[0] == mk)
        self._st.mode, self._st.think_open, self._st.think_close = "think", pair[0], pair[1]
        if self._raw_marks:
            self._st.pending_text.append(mk)
        self._buf = buf[i + len(mk):]

    def _step_think(self, out: list[Event], final: bool) -> None:
        st = self._st
        buf = self._buf
        markers: tuple[str, ...] = (st.think_close, *self.syntax.think_ends)
        if self.syntax.calls_in_reasoning:
            markers = (*markers, *self._mid_openers)
        i, mk = find_first(buf, markers)
        if i < 0:
            keep = 0 if final else holdback(buf, markers)
            if len(buf) > keep:
                self._emit_thinking(out, buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
            if final:
                st.mode = "text"
            return
        self._emit_thinking(out, buf[:i])
        if not final and unsettled(buf, i, markers):
            self._buf = buf[i:]
            return
        if mk == st.think_close:
            if self._raw_marks:
                self._emit_text(out, mk)
            self._buf = buf[i + len(mk):]
            st.mode = "strip"
            return
        if mk in self.syntax.think_ends:
            self._buf = buf[i:]
            st.mode = "strip"
            return
        call = next(c for c in self._calls if c.open == mk)
        self._open_call(call, buf, i, out, final)

    def _call_feed(self, text: str, out: list[Event], final: bool) -> None:
        """More of the current call's body. It ends at a ``close``/``ends``
        marker, where ``complete`` says, or (``final``) at the end of the output.
        Searches resume where they stopped, so a long body costs linear time."""
        call = self._st.call
        assert call is not None
        # The one reference to the body is this local while it grows: CPython then
        # extends the string in place instead of copying it (amortised linear).
        body, self._body = self._body, ""
        body += text
        end = rest = -1  # offsets in the body, once it is over
        if self._markers:
            start = max(0, self._searched - self._hold)
            i, mk = find_first(body, self._markers, start)
            while i >= 0 and _inside_json(body, i):
                i, mk = find_first(body, self._markers, i + 1)  # a marker inside a JSON string
            if i >= 0:
                end = i
                rest = end + len(mk) if mk in call.close else end
        self._searched = len(body)
        if end < 0 and self._complete is not None and text:
            j = self._complete(body)
            if j is not None:
                end = rest = j
        cut = False  # the output ended inside the call (max_tokens, or a model that stopped there)
        if end < 0:
            if not final:
                self._body = body
                return
            end = rest = len(body)
            # cut off, unless a closing marker was there (inside what looked like JSON: malformed)
            cut = find_first(body, self._markers, 0)[0] < 0 if self._markers else True
        st = self._st
        if self._committed and len(body) != self._partial_at:
            self._body = body
            self.partial_calls()  # what was announced, read to the end of the body
        st.mode, st.call, self._complete = "text", None, None
        committed, self._committed, self._partial = self._committed, False, None
        try:
            calls = call.parse(body[:end], self.tools)
        except NotACall:
            bare = call.at_start_only and not (self.forced_call or committed)
            cut_calls = _cut_call(call, body, self.tools) if cut and not bare else None
            if cut_calls is not None:
                out.extend(cut_calls)
            elif committed:
                out.extend(finished_call(c) for c in self._partial_last)
            elif not cut or call.keep_open:
                raw = (body[:end] if call.keep_open else st.opener + body[:end]) + body[end:rest]
                self._emit_text(out, raw)
            # else: a call cut off before its name and arguments could be read is dropped
            # (its markers are not answer text)
        else:
            out.extend(calls)
        self._buf = body[rest:] + self._buf


def _cut_call(call: CallSyntax, body: str, tools: ToolSet) -> list[Event] | None:
    """The calls an output cut off inside a call's JSON arguments still makes:
    its finished arguments only (see :func:`close_partial_json`), as Anthropic
    returns a tool_use block cut by max_tokens. None if that does not parse."""
    i = min((j for j in (body.find("{"), body.find("[")) if j >= 0), default=-1)
    if i < 0:
        return None
    closed = close_partial_json(body[i:])
    if closed is None:
        return None
    try:
        return list(call.parse(body[:i] + closed, tools))
    except NotACall:
        return None


def finished_call(call: Call) -> Call:
    """A call in progress with its finished arguments only (as :func:`_cut_call`)."""
    closed = close_partial_json(call.arguments) if call.arguments.strip() else None
    try:
        value = json.loads(closed, strict=False) if closed is not None else {}
        args = dumps(value if isinstance(value, dict) else {})
    except ValueError:
        args = "{}"
    return Call(call.name, args, call.id)


def _inside_json(body: str, end: int) -> bool:
    """Is offset ``end`` of the body inside an unclosed JSON value that the body
    opens with? (A closing marker there is part of a string argument.)"""
    s = body[:end].lstrip()
    if not s.startswith(("{", "[")):
        return False
    return json_end(s, 0) is None


