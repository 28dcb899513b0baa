"""From decoded model text to wire stream messages, for the local backends.

Roles:

* :class:`StopMatcher` finds stop strings in streamed text.
* :class:`AnswerWriter` puts a family's reader (:mod:`workers.formats`) behind the
  stop strings, for a backend's decode loop: decoded text in, wire stream messages
  out (``ThinkingDelta`` with a signature when the block ends, ``TextDelta``,
  ``ToolCallStart`` + ``ToolArgsDelta``), and the stop reason. Every local
  backend (llama.cpp, MLX) shares it, so they behave alike. A tool call streams
  while the model writes it: its start as soon as its name is known, its
  arguments as they come (see :class:`AnswerWriter`).
* :func:`effective_choice`: the ``force_tool`` test knob (grammars: :mod:`workers.formats.grammar`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    StopReason,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from turnout.protocol.ids import hex_id
from turnout.workers.formats.events import Call, Text, Thinking
from turnout.workers.formats.jsonpartial import ArgsPrefix
from turnout.workers.formats.render import Rendered
from turnout.workers.formats.syntax import holdback

ARGS_CHUNK = 64  # characters of tool-call JSON per ToolArgsDelta


def new_call_id() -> str:
    return hex_id("toolu_")


# ---------------------------------------------------------------- stop strings


class StopMatcher:
    """Finds stop strings in streamed text, holding back only what could begin one.

    ``client`` stops (``req.stop``) end with ``stop_sequence``; ``turn`` stops (the
    template's end-of-turn strings) end with ``end_turn``."""

    def __init__(self, client: list[str], turn: list[str]) -> None:
        self.client = [s for s in client if s]
        self.turn = [s for s in turn if s and s not in self.client]
        self._all = tuple(self.client + self.turn)
        self._buf = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """-> (text safe to emit, the stop string hit or None)."""
        self._buf += text
        hits = [(self._buf.find(s), s) for s in self._all if s in self._buf]
        if hits:
            i, s = min(hits)
            out, self._buf = self._buf[:i], ""
            return out, s
        keep = holdback(self._buf, self._all)
        out = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep :]
        return out, None

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out


# ---------------------------------------------------------------- answer writer


class AnswerWriter:
    """Decoded model text -> wire stream messages, for one request.

    Options:
      ``rendered``: the prompt's :class:`~workers.formats.render.Rendered`: which
        family reads the answer, the tools offered, whether the prompt left a
        reasoning block open, and the template's end-of-turn strings.
      ``stops``: more end-of-turn strings (the model's ``stop`` option); the
        client's ``req.stop`` are added as stop sequences.
      ``forced``: the answer is grammar-constrained to be exactly one call; it (or
        ``tool_choice.disable_parallel``) ends the answer after the first call.
      ``turn_stops``: False when end-of-turn strings must not cut the answer (a
        grammar-forced call or structured output ends by its grammar).
      ``sign``: signs a finished thinking block (:class:`workers.signing.Signer`);
        the signature follows the block's text as a ``ThinkingDelta``.

    ``feed`` returns the messages to send and sets :attr:`stop_reason` when the
    answer is over (a stop string, or the single forced call is complete); the
    backend then calls ``finish``, then ``done``. Reasoning the client did not ask
    for is read (so its markers never show) and dropped.

    Tool calls stream while they are written, for the families whose reader
    tells the call in progress (:meth:`~workers.formats.reader.Reader.partial_calls`):
    ``ToolCallStart`` as soon as the call's name is known (the reader is then
    told to :meth:`~workers.formats.reader.Reader.commit`: an announced call is
    always made), then its arguments as ``ToolArgsDelta`` chunks as they come
    (:class:`~workers.formats.jsonpartial.ArgsPrefix`: in the final arguments'
    exact form, each string once it is closed, each number once the ``,`` after
    it is written), the rest when the call is complete. The deltas concatenate
    to the final arguments exactly; a call cut off by max_tokens (finished
    arguments only) never loses what was sent. Formats whose arguments are
    converted (XML parameters typed by schema, Python calls) stream at the end of
    each parameter. A call that was not announced goes out whole."""

    def __init__(self, request_id: str, req: ChatRequest, rendered: Rendered, *, stops: list[str] | None = None,
                 forced: bool = False, turn_stops: bool = True,
                 sign: Callable[[str], str] | None = None) -> None:
        self.request_id = request_id
        turn = [*rendered.stop, *(stops or [])] if turn_stops else []
        self.stops = StopMatcher(req.stop, turn)
        self.reader = rendered.new_reader()
        self.keep_thinking = req.thinking is not None and req.thinking.type != "disabled"
        self.single_call = forced or bool(req.tool_choice and req.tool_choice.disable_parallel)
        # A grammar-forced answer is a call from its first byte: even cut, it is made.
        self.reader.forced_call = forced
        self.sign = sign
        self.n_calls = 0
        self.stop_reason: StopReason | None = None
        self.stop_sequence = ""
        self._thought: list[str] = []  # the open thinking block's text, for its signature
        self._live: list[ArgsPrefix] = []  # the announced calls of the call being read, in order

    def _close_thinking(self, out: list[m.StreamMsg]) -> None:
        if self._thought:
            text, self._thought = "".join(self._thought), []
            if self.sign is not None:
                out.append(m.ThinkingDelta(self.request_id, 0, signature=self.sign(text)))

    def _convert(self, events: list[Any], out: list[m.StreamMsg]) -> None:
        rid = self.request_id
        for ev in events:
            if isinstance(ev, Thinking):
                if ev.text and self.keep_thinking:
                    self._thought.append(ev.text)
                    out.append(m.ThinkingDelta(rid, 0, text=ev.text))
                continue
            if isinstance(ev, Text) and not ev.text:
                continue
            if self.single_call and self.n_calls:
                continue  # one call was asked for: nothing after it
            self._close_thinking(out)
            if isinstance(ev, Text):
                out.append(m.TextDelta(rid, 0, ev.text))
            elif isinstance(ev, Call):
                sent = ""
                if self._live:  # announced while it was written: the rest of its arguments
                    live = self._live.pop(0)
                    sent = live.text
                    if not ev.arguments.startswith(sent):
                        # cannot happen for arguments that are JSON objects without repeated
                        # keys; close what was sent rather than send broken JSON
                        ev = Call(ev.name, sent + live.closers(), ev.id)
                else:
                    out.append(m.ToolCallStart(rid, 0, index=self.n_calls, id=new_call_id(), name=ev.name))
                self._args(out, self.n_calls, ev.arguments[len(sent):])
                self.n_calls += 1
        if self._live and any(isinstance(ev, Call) for ev in events):
            self._end_live(out)  # the body was read: an announced call it did not make is closed as sent

    def _end_live(self, out: list[m.StreamMsg]) -> None:
        """Close announced calls that were never made (cannot happen: an
        announced call is made; kept so a stream stays well formed)."""
        for live in self._live:
            self._args(out, self.n_calls, live.closers())
            self.n_calls += 1
        self._live.clear()

    def _args(self, out: list[m.StreamMsg], index: int, text: str) -> None:
        for i in range(0, len(text), ARGS_CHUNK):
            out.append(m.ToolArgsDelta(self.request_id, 0, index=index, partial_json=text[i : i + ARGS_CHUNK]))

    def _stream_calls(self, out: list[m.StreamMsg]) -> None:
        """The calls being written: announce each once its name is known, send
        its arguments as far as they are certain."""
        if self.single_call and self.n_calls:
            return
        if self.reader.in_bare_call() and not self.reader.forced_call:
            return  # an answer that opens with JSON is a call only once that JSON is whole
        partial = self.reader.partial_calls()
        if self.single_call:
            partial = partial[:1]
        for k, call in enumerate(partial):
            if k == len(self._live):
                if k:  # the one before is complete: all of it goes before this one starts
                    prev = partial[k - 1]
                    self._args(out, self.n_calls + k - 1, self._live[k - 1].feed(prev.arguments))
                    if not self._live[k - 1].closed:
                        return  # its arguments were not streamable: the next call waits for its end
                self._close_thinking(out)
                out.append(m.ToolCallStart(self.request_id, 0, index=self.n_calls + k, id=new_call_id(),
                                           name=call.name))
                self._live.append(ArgsPrefix())
                self.reader.commit()
            if k == len(partial) - 1 or k == len(self._live) - 1:
                self._args(out, self.n_calls + k, self._live[k].feed(call.arguments))

    def feed(self, text: str) -> list[m.StreamMsg]:
        out: list[m.StreamMsg] = []
        emit, hit = self.stops.feed(text)
        if emit:
            self._convert(self.reader.feed(emit), out)
            self._stream_calls(out)
        if hit is not None:
            if hit in self.stops.client:
                self.stop_reason, self.stop_sequence = "stop_sequence", hit
            else:
                self.stop_reason = "end_turn"
        elif self.single_call and self.n_calls:
            self.stop_reason = "end_turn"
        return out

    def finish(self, tail: str = "") -> list[m.StreamMsg]:
        """Everything still held back (``tail``: the detokenizer's last bytes)."""
        out: list[m.StreamMsg] = []
        rest = self.stops.flush() + tail
        if rest:
            self._convert(self.reader.feed(rest), out)
        self._convert(self.reader.finish(), out)
        self._end_live(out)
        self._close_thinking(out)
        return out

    def done(self, stop_reason: StopReason, usage: Usage) -> m.Done:
        """The terminal message: a call the model ended its turn with is ``tool_use``."""
        if self.n_calls and stop_reason in ("end_turn", "stop_sequence"):
            stop_reason = "tool_use"
        return m.Done(self.request_id, 0, stop_reason, usage,
                      stop_sequence=self.stop_sequence if stop_reason == "stop_sequence" else "")


# ---------------------------------------------------------------- grammar


def effective_choice(req: ChatRequest, force_tool: str = "") -> ToolChoice | None:
    """``req.tool_choice``, or ``tool`` naming ``force_tool`` (a backend's test/debug
    option) when the request offers that tool, leaves the choice to the model, ends
    with the user's own text and has no tool call yet: the opening turn of a task.
    Once that call has been made, the model answers in text (``none``). So a base
    model that cannot choose a tool drives exactly one full round trip (the forced
    call, its result, then a text answer) instead of calling tools at random, and a
    client that follows up (Claude Code's "resume" after ``max_tokens``) is not
    forced into calling again."""
    choice = req.tool_choice
    if not force_tool or (choice is not None and choice.type != "auto"):
        return choice
    if not any(t.name == force_tool for t in req.tools):
        return choice
    if any(isinstance(p, ToolUsePart) for msg in req.messages for p in msg.content):
        return ToolChoice(type="none")
    last = req.messages[-1] if req.messages else None
    if last is None or last.role != "user" or any(isinstance(p, ToolResultPart) for p in last.content):
        return choice
    return ToolChoice(type="tool", name=force_tool, disable_parallel=True)


