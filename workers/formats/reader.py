"""The streaming reader: a model's output in, text / thinking / tool calls out.

A family's output is described by a :class:`Syntax`: the markers of its reasoning
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

Work is linear in the output: every scan resumes where the last one stopped, and a
call body is parsed once, when it is complete.

Families whose output is not "markers in text" (harmony's channels, functionary's
``>>>recipient``) have readers of their own with the same ``feed``/``finish``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from workers.formats.events import Call, Event, NotACall, Text, Thinking
from workers.formats.jsoncalls import json_complete, json_end
from workers.formats.schema import ToolSet

Parse = Callable[[str, ToolSet], list[Call]]


@dataclass(frozen=True, slots=True)
class CallSyntax:
    """How one kind of tool call (or section of calls) is written.

    ``open``: the marker that starts it. ``keep_open``: the marker is part of the
    body (``<function=`` in Qwen3-Coder's output, where ``<tool_call>`` may be
    left out). ``close``: markers that end it (consumed). ``ends``: markers that
    end it without being consumed (the next call's opener). With neither, the body
    ends where ``complete`` says (a balanced JSON value, say) or at the end of the
    output. ``parse`` reads a complete body; it raises :class:`NotACall` when the
    body is not a call after all.
    """

    open: str
    parse: Parse
    close: tuple[str, ...] = ()
    ends: tuple[str, ...] = ()
    keep_open: bool = False
    complete: Callable[[str], int | None] | None = None
    at_start_only: bool = False  # only recognised before any text (a bare JSON call)


@dataclass(frozen=True, slots=True)
class Syntax:
    """A family's output. ``think``: (open, close) marker pairs of reasoning blocks.
    ``think_anywhere``: an opener after text starts another block (interleaved
    thinking); otherwise only at the start. ``calls_in_reasoning``: a call opener
    inside an unclosed reasoning block ends it (Kimi, Ling). ``drop``: markers
    removed from the text (content wrappers, end-of-turn markers).
    ``raw_markers``: with ``raw_reasoning``, the reasoning block's markers stay in
    the text (False: only its text does, as llama.cpp reads Ling)."""

    think: tuple[tuple[str, str], ...] = ()
    calls: tuple[CallSyntax, ...] = ()
    drop: tuple[str, ...] = ()
    think_anywhere: bool = False
    calls_in_reasoning: bool = True
    strip_after_think: str = "\n"  # characters dropped between a reasoning block and the answer
    raw_markers: bool = True


def holdback(buf: str, markers: tuple[str, ...], start: int = 0) -> int:
    """Length of the longest suffix of ``buf[start:]`` that is a proper prefix of a marker."""
    best = 0
    n_buf = len(buf) - start
    for mk in markers:
        for n in range(min(len(mk) - 1, n_buf), best, -1):
            if buf.endswith(mk[:n]):
                best = n
                break
    return best


def unsettled(buf: str, i: int, markers: tuple[str, ...]) -> bool:
    """Could the text at ``buf[i:]`` still become a longer marker than the one
    found there (``<|channel>`` that may be the start of ``<|channel>thought``)?"""
    rest = len(buf) - i
    return any(len(mk) > rest and mk.startswith(buf[i:]) for mk in markers)


def find_first(buf: str, markers: tuple[str, ...], start: int = 0) -> tuple[int, str]:
    """(index, marker) of the earliest marker in ``buf[start:]``; (-1, "") if none.
    The longest marker wins at the same index."""
    best_i, best_m = -1, ""
    for mk in markers:
        i = buf.find(mk, start)
        if i >= 0 and (best_i < 0 or i < best_i or (i == best_i and len(mk) > len(best_m))):
            best_i, best_m = i, mk
    return best_i, best_m


@dataclass(slots=True)
class _State:
    mode: str = "start"  # start | text | think | strip | call
    think_close: str = ""
    think_open: str = ""
    call: CallSyntax | None = None
    opener: str = ""  # the marker text that opened the current call
    emitted_text: bool = False
    pending_text: list[str] = field(default_factory=list)


class Reader:
    """Feed a model's output; get events. See the module docstring.

    Options: ``tools`` (the offered tools; argument types come from them),
    ``reasoning_open``: the prompt ends inside a reasoning block (the opener's
    text, e.g. ``"<think>\\n"``), ``raw_reasoning``: keep reasoning as text.
    ``tools_enabled``: False when no tools were offered: calls are not looked for.
    """

    def __init__(self, syntax: Syntax, tools: ToolSet | None = None, *, reasoning_open: str = "",
                 raw_reasoning: bool = False, tools_enabled: bool = True) -> None:
        self.syntax = syntax
        self.tools = tools or ToolSet()
        self.raw = raw_reasoning
        self._raw_marks = raw_reasoning and syntax.raw_markers  # reasoning markers kept in the text
        self._calls = syntax.calls if tools_enabled else ()
        self._openers = tuple(c.open for c in self._calls)
        self._mid_openers = tuple(c.open for c in self._calls if not c.at_start_only)
        # a stray call marker is dropped only where calls are read
        call_marks = {m for c in syntax.calls for m in (c.open, *c.close, *c.ends)}
        self._drop = syntax.drop if tools_enabled else tuple(m for m in syntax.drop if m not in call_marks)
        self._think_opens = tuple(o for o, _ in syntax.think)
        self._st = _State()
        self._buf = ""
        if reasoning_open:
            pair = next(((o, c) for o, c in syntax.think if reasoning_open.strip().startswith(o.strip())), None)
            if pair is None and syntax.think:
                pair = syntax.think[0]
            if pair is not None:
                self._st.mode = "think"
                self._st.think_open, self._st.think_close = reasoning_open, pair[1]
                if self._raw_marks:
                    self._st.pending_text.append(reasoning_open)

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
        self._body = []
        self._body_len = 0
        self._tail = ""
        self._markers = (*call.close, *call.ends)
        self._hold = max((len(m) for m in self._markers), default=1) - 1
        self._json = JsonEnd() if call.complete is json_complete else None
        rest = buf[i:] if call.keep_open else buf[i + len(call.open):]
        self._buf = ""
        if call.keep_open:
            # the body starts with the opener, which an `ends` marker may equal
            self._body, self._body_len = [rest[: len(call.open)]], len(call.open)
            if self._json is not None:
                self._json.feed(call.open)
            self._tail = call.open[-self._hold:] if self._hold else ""
            rest = rest[len(call.open):]
        self._call_feed(rest, out, final)

    def _text_markers(self) -> tuple[str, ...]:
        ms = (*self._mid_openers, *self._drop)
        if self.syntax.think_anywhere:
            ms = (*ms, *self._think_opens)
        return ms

    def _step_text(self, out: list[Event], final: bool) -> None:
        buf = self._buf
        markers = self._text_markers()
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
        if mk in self._drop:
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
        markers: tuple[str, ...] = (st.think_close,)
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
        call = next(c for c in self._calls if c.open == mk)
        self._open_call(call, buf, i, out, final)

    def _call_feed(self, text: str, out: list[Event], final: bool) -> None:
        """More of the current call's body. It ends at a ``close``/``ends``
        marker, where ``complete`` says, or (``final``) at the end of the output.
        Only the new text (and a marker's length before it) is searched."""
        call = self._st.call
        assert call is not None
        end = rest = -1  # offsets in the body, once it is over
        if self._markers and text:
            window = self._tail + text
            base = self._body_len - len(self._tail)
            i, mk = find_first(window, self._markers)
            while i >= 0 and self._inside_json(base + i, window[:i]):
                i, mk = find_first(window, self._markers, i + 1)  # a marker inside a JSON string
            if i >= 0:
                end = base + i
                rest = end + len(mk) if mk in call.close else end
        if end < 0 and text and (self._json is not None or call.complete is not None):
            if self._json is not None:
                j = self._json.feed(text)
                if j is not None:
                    end = rest = self._body_len + j
            else:
                assert call.complete is not None
                j = call.complete("".join(self._body) + text)
                if j is not None:
                    end = rest = j
        if text:
            self._body.append(text)
            self._body_len += len(text)
            if self._hold:
                self._tail = (self._tail + text)[-self._hold:]
        if end < 0:
            if not final:
                return
            end = rest = self._body_len
        whole = "".join(self._body)
        self._body, self._body_len, self._tail = [], 0, ""
        body, after = whole[:end], whole[rest:]
        st = self._st
        st.mode, st.call = "text", None
        try:
            calls = call.parse(body, self.tools)
        except NotACall:
            raw = (body if call.keep_open else st.opener + body) + whole[end:rest]
            self._emit_text(out, raw)
        else:
            out.extend(calls)
        self._buf = after + self._buf


    def _inside_json(self, end: int, window_head: str) -> bool:
        """Is offset ``end`` of the body inside an unclosed JSON value that the
        body opens with? (A closing marker there is part of a string argument.)"""
        head = "".join(self._body)[:end] if end <= self._body_len else "".join(self._body) + window_head[
            len(self._tail):]
        s = head.lstrip()
        if not s.startswith(("{", "[")):
            return False
        return json_end(s, 0) is None


class JsonEnd:
    """Finds where a JSON value ends, fed a piece at a time (linear overall)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_str = self.esc = False
        self.started = False
        self.seen = 0

    def feed(self, text: str) -> int | None:
        """Offset (from the first text fed) just past the value, once it is closed."""
        for k, ch in enumerate(text):
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == '"':
                    self.in_str = False
                    if self.depth == 0 and self.started:
                        return self.seen + k + 1
            elif ch == '"':
                self.in_str = True
                self.started = True
            elif ch in "{[":
                self.depth += 1
                self.started = True
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0 and self.started:
                    return self.seen + k + 1
            elif not self.started and ch not in " \t\r\n":
                return self.seen + k  # not JSON: it ends here, and will not parse
        self.seen += len(text)
        return None
