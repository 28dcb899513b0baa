"""Streaming parsers of what a local model writes: thinking, text and tool calls.

Roles:

* :class:`ThinkSplitter` separates ``<think>…</think>`` from the answer.
* :class:`ToolCallParser` finds tool calls in the answer as it streams, in every
  format local models use: Hermes/Qwen ``<tool_call>{…}</tool_call>``, Mistral
  ``[TOOL_CALLS][{…}]`` (and ``[TOOL_CALLS]name[ARGS]{…}``), Llama 3
  ``<|python_tag|>``/``{"name": …, "parameters": …}``, and a plain JSON object
  ``{"name": …, "arguments": …}`` at the start of the answer. Text before a call
  streams as it comes; only a suffix that could be the start of a marker is held
  back. A call is buffered until it is complete and valid JSON, then emitted as a
  :class:`Call` (the backend turns it into ``ToolCallStart`` + ``ToolArgsDelta``
  chunks): a call that turns out malformed is returned as text instead of a broken
  ``tool_use`` block.
* :class:`StopMatcher` finds stop strings in streamed text.
* :class:`AnswerWriter` puts these together for a backend's decode loop: decoded
  text in, wire stream messages out (``ThinkingDelta`` with a signature when the
  block ends, ``TextDelta``, ``ToolCallStart`` + ``ToolArgsDelta``), and the stop
  reason. Every local backend (llama.cpp, MLX) shares it, so they behave alike.
* :func:`tool_grammar` builds the llama.cpp grammar that forces a valid call when
  ``tool_choice`` is ``any`` or ``tool``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import messages as m
from protocol.chat import (
    ChatRequest,
    StopReason,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from protocol.ids import hex_id

ARGS_CHUNK = 64  # characters of tool-call JSON per ToolArgsDelta


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Thinking:
    text: str


@dataclass(slots=True)
class Call:
    id: str
    name: str
    arguments: str  # a JSON object, compact


Event = Text | Thinking | Call


def new_call_id() -> str:
    return hex_id("toolu_")


def _holdback(buf: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of a marker."""
    best = 0
    for mk in markers:
        for n in range(min(len(mk) - 1, len(buf)), best, -1):
            if buf.endswith(mk[:n]):
                best = n
                break
    return best


# ---------------------------------------------------------------- thinking


class ThinkSplitter:
    """Splits ``<think>…</think>`` (at the start of the answer) from the rest.

    ``enabled``: thinking is streamed as :class:`Thinking`; otherwise it is dropped
    (the client did not ask for thinking blocks). ``open_at_start``: the prompt
    already opened ``<think>`` (DeepSeek-R1 style templates)."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self, enabled: bool, open_at_start: bool = False) -> None:
        self.enabled = enabled
        self._state = "thinking" if open_at_start else "start"
        self._buf = ""

    def feed(self, text: str) -> list[Thinking | Text]:
        self._buf += text
        out: list[Thinking | Text] = []
        while self._buf:
            if self._state == "start":
                stripped = self._buf.lstrip()
                if not stripped:
                    return out
                if stripped.startswith(self.OPEN):
                    self._buf = stripped[len(self.OPEN) :]
                    self._state = "thinking"
                    continue
                if self.OPEN.startswith(stripped):
                    return out  # could still become <think>
                self._state = "answer"
            if self._state == "after_think":
                # the newlines that separate thinking from the answer are not answer
                self._buf = self._buf.lstrip("\n")
                if not self._buf:
                    return out
                self._state = "answer"
            if self._state == "answer":
                out.append(Text(self._buf))
                self._buf = ""
                return out
            # thinking
            i = self._buf.find(self.CLOSE)
            if i >= 0:
                if i and self.enabled:
                    out.append(Thinking(self._buf[:i]))
                self._buf = self._buf[i + len(self.CLOSE) :]
                self._state = "after_think"
                continue
            keep = _holdback(self._buf, (self.CLOSE,))
            emit = self._buf[: len(self._buf) - keep]
            if emit and self.enabled:
                out.append(Thinking(emit))
            self._buf = self._buf[len(self._buf) - keep :]
            return out
        return out

    def finish(self) -> list[Thinking | Text]:
        buf, self._buf = self._buf, ""
        if not buf:
            return []
        if self._state == "thinking":
            return [Thinking(buf)] if self.enabled else []
        return [Text(buf)]


# ---------------------------------------------------------------- JSON scanning


def _json_end(s: str, start: int) -> int | None:
    """Index just past the JSON object/array opening at ``s[start]``, or None if
    it is not closed yet. Tracks strings and escapes, not full JSON validity."""
    depth = 0
    in_str = esc = False
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _as_call(obj: Any, known: set[str] | None) -> Call | None:
    """A parsed JSON value -> a call, if it has the shape of one."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    if known is not None and name not in known:
        return None
    args: Any = {}
    for key in ("arguments", "parameters", "input", "args"):
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):
        try:
            args = json.loads(args, strict=False) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return Call(new_call_id(), name, json.dumps(args, ensure_ascii=False, separators=(",", ":")))


def _calls_from(body: str, known: set[str] | None) -> list[Call] | None:
    """Every call in ``body``: one JSON object, an array of them, or several objects
    separated by whitespace/``;``. None if ``body`` is not entirely calls."""
    body = body.strip()
    if body.startswith("```"):  # a fenced block: ```json\n{...}\n```
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0].strip()
    calls: list[Call] = []
    pos = 0
    while pos < len(body):
        while pos < len(body) and body[pos] in " \t\r\n;,":
            pos += 1
        if pos >= len(body):
            break
        if body[pos] not in "{[":
            return None
        end = _json_end(body, pos)
        if end is None:
            return None
        try:
            # strict=False: models (and grammar-constrained output) put raw tabs or
            # control characters inside strings; re-encoding escapes them.
            value = json.loads(body[pos:end], strict=False)
        except ValueError:
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item, known)
            if call is None:
                return None
            calls.append(call)
        pos = end
    return calls or None


# ---------------------------------------------------------------- tool calls


_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_MISTRAL = "[TOOL_CALLS]"
_PYTHON_TAG = "<|python_tag|>"
_MARKERS = (_HERMES_OPEN, _MISTRAL, _PYTHON_TAG)


class ToolCallParser:
    """Feed answer text; get :class:`Text` and :class:`Call` events.

    Options:
      ``tool_names``: the tools offered; a bare JSON object counts as a call only if
        it names one of them (explicit markers accept any name).
      ``enabled``: False when no tools were offered: everything is text.
      ``forced``: the output is grammar-constrained to be exactly one call.
    """

    def __init__(self, tool_names: list[str], enabled: bool = True, forced: bool = False) -> None:
        self.known = set(tool_names)
        self.enabled = enabled and bool(tool_names)
        self.forced = forced
        self._buf = ""
        self._mode = "start"  # start | text | hermes | mistral | tail_json | bare_json
        self.calls = 0

    def feed(self, text: str) -> list[Text | Call]:
        if not self.enabled:
            return [Text(text)] if text else []
        self._buf += text
        out: list[Text | Call] = []
        while True:
            before = (self._mode, len(self._buf))
            self._step(out, final=False)
            if (self._mode, len(self._buf)) == before:
                return out

    def finish(self) -> list[Text | Call]:
        if not self.enabled:
            return []
        out: list[Text | Call] = []
        self._step(out, final=True)
        if self._buf:
            out.append(Text(self._buf))
            self._buf = ""
        return out

    def _emit_calls(self, out: list[Text | Call], calls: list[Call]) -> None:
        out.extend(calls)
        self.calls += len(calls)

    def _step(self, out: list[Text | Call], final: bool) -> None:
        buf = self._buf
        if self._mode == "start":
            # A bare JSON object (or ```json fence) opening the answer may be a call.
            s = buf.lstrip()
            if not s:
                return
            if s[0] == "{" or s.startswith("```json") or self.forced:
                self._mode = "bare_json"
            elif "```json".startswith(s) and not final:
                return
            else:
                self._mode = "text"
            return
        if self._mode == "text":
            idx = [(buf.find(mk), mk) for mk in _MARKERS if mk in buf]
            if idx:
                i, mk = min(idx)
                if i:
                    out.append(Text(buf[:i]))
                self._buf = buf[i + len(mk) :]
                self._mode = {"<tool_call>": "hermes", "[TOOL_CALLS]": "mistral"}.get(mk, "tail_json")
                return
            keep = 0 if final else _holdback(buf, _MARKERS)
            if len(buf) > keep:
                out.append(Text(buf[: len(buf) - keep]))
                self._buf = buf[len(buf) - keep :]
            return
        if self._mode == "hermes":
            i = buf.find(_HERMES_CLOSE)
            if i < 0 and not final:
                return
            body = buf[:i] if i >= 0 else buf
            calls = _calls_from(body, None)
            if calls is None:  # not a call after all: give the text back
                out.append(Text(_HERMES_OPEN + (buf[: i + len(_HERMES_CLOSE)] if i >= 0 else buf)))
            else:
                self._emit_calls(out, calls)
            self._buf = buf[i + len(_HERMES_CLOSE) :] if i >= 0 else ""
            self._mode = "text"
            return
        if self._mode == "mistral":
            s = buf.lstrip()
            if s.startswith("[") or s.startswith("{"):
                self._mode = "tail_json"
                return
            # [TOOL_CALLS]name[ARGS]{...}
            j = s.find("[ARGS]")
            if j < 0:
                if final:
                    out.append(Text(_MISTRAL + buf))
                    self._buf = ""
                return
            end = _json_end(s, j + 6) if s[j + 6 : j + 7] == "{" else None
            if end is None and not final:
                return
            call = _as_call({"name": s[:j].strip(), "arguments": s[j + 6 : end]}, None) if end else None
            if call is None:
                out.append(Text(_MISTRAL + buf))
                self._buf = ""
            else:
                self._emit_calls(out, [call])
                self._buf = s[end:]
                self._mode = "mistral_more"
            return
        if self._mode == "mistral_more":
            s = buf.lstrip()
            if s.startswith(_MISTRAL):
                self._buf, self._mode = s[len(_MISTRAL) :], "mistral"
            elif s or final:
                self._mode = "text"
            return
        if self._mode in ("tail_json", "bare_json"):
            # After a marker (tail_json) or at the start of the answer (bare_json):
            # JSON calls, one after another, possibly fenced.
            known = None if self._mode == "tail_json" else self.known
            s = buf.lstrip(" \t\r\n;,")
            if not s:
                if final:
                    self._buf = ""
                return
            if s.startswith("```"):
                close = s.find("```", 3)
                if close < 0 and not final:
                    return
                block = s[: close + 3] if close >= 0 else s
                calls = _calls_from(block, known)
                if calls is None:
                    self._fallback(out, buf)
                    return
                self._emit_calls(out, calls)
                self._buf = s[len(block) :]
                return
            if s[0] not in "{[":
                self._buf = s
                self._mode = "text"  # text after the calls (or a bare answer)
                return
            end = _json_end(s, 0)
            if end is None:
                if final:
                    self._fallback(out, buf)
                return
            calls = _calls_from(s[:end], known)
            if calls is None:
                self._fallback(out, buf)
                return
            self._emit_calls(out, calls)
            self._buf = s[end:]
            return

    def _fallback(self, out: list[Text | Call], text: str) -> None:
        """Not a call after all: hand the buffered text back as text."""
        out.append(Text(text))
        self._buf = ""
        self._mode = "text"


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
        keep = _holdback(self._buf, self._all)
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
      ``stops``: the template's end-of-turn strings (``Rendered.stop``); the
        client's ``req.stop`` are added as stop sequences.
      ``tools_enabled``/``forced``: as for :class:`ToolCallParser`; ``forced`` or
        ``tool_choice.disable_parallel`` ends the answer after the first call.
      ``thinking_open``: the prompt ends inside ``<think>``.
      ``sign``: signs a finished thinking block (:class:`workers.signing.Signer`);
        the signature follows the block's text as a ``ThinkingDelta``.

    ``feed`` returns the messages to send and sets :attr:`stop_reason` when the
    answer is over (a stop string, or the single forced call is complete); the
    backend then calls ``finish``, then ``done``."""

    def __init__(self, request_id: str, req: ChatRequest, *, stops: list[str], tools_enabled: bool,
                 thinking_open: bool = False, forced: bool = False,
                 sign: Callable[[str], str] | None = None) -> None:
        self.request_id = request_id
        self.stops = StopMatcher(req.stop, stops)
        thinking = req.thinking is not None and req.thinking.type != "disabled"
        self.think = ThinkSplitter(thinking, thinking_open)
        self.parser = ToolCallParser([t.name for t in req.tools] if tools_enabled else [],
                                     enabled=tools_enabled, forced=forced)
        self.single_call = forced or bool(req.tool_choice and req.tool_choice.disable_parallel)
        self.sign = sign
        self.n_calls = 0
        self.stop_reason: StopReason | None = None
        self.stop_sequence = ""
        self._thought: list[str] = []  # the open thinking block's text, for its signature

    def _close_thinking(self, out: list[m.StreamMsg]) -> None:
        if self._thought:
            text, self._thought = "".join(self._thought), []
            if self.sign is not None:
                out.append(m.ThinkingDelta(self.request_id, 0, signature=self.sign(text)))

    def _convert(self, events: list[Any], out: list[m.StreamMsg]) -> None:
        rid = self.request_id
        for ev in events:
            if isinstance(ev, Thinking):
                if ev.text:
                    self._thought.append(ev.text)
                    out.append(m.ThinkingDelta(rid, 0, text=ev.text))
                continue
            if isinstance(ev, Text) and not ev.text:
                continue
            self._close_thinking(out)
            if isinstance(ev, Text):
                out.append(m.TextDelta(rid, 0, ev.text))
            else:
                out.append(m.ToolCallStart(rid, 0, index=self.n_calls, id=ev.id, name=ev.name))
                for i in range(0, len(ev.arguments), ARGS_CHUNK):
                    out.append(m.ToolArgsDelta(rid, 0, index=self.n_calls, partial_json=ev.arguments[i : i + ARGS_CHUNK]))
                self.n_calls += 1

    def _route(self, text: str, out: list[m.StreamMsg]) -> None:
        for part in self.think.feed(text):
            if isinstance(part, Thinking):
                self._convert([part], out)
            else:
                self._convert(self.parser.feed(part.text), out)

    def feed(self, text: str) -> list[m.StreamMsg]:
        out: list[m.StreamMsg] = []
        emit, hit = self.stops.feed(text)
        if emit:
            self._route(emit, out)
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
            self._route(rest, out)
        for part in self.think.finish():
            if isinstance(part, Thinking):
                self._convert([part], out)
            else:
                self._convert(self.parser.feed(part.text), out)
        self._convert(self.parser.finish(), out)
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



# JSON-schema keywords that only annotate, which llama.cpp's converter rejects or
# mishandles (a schema of only a description is "unrecognized"; `{}` is any object).
_DROP = {"$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated", "readOnly", "writeOnly", "propertyNames"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions"}


def _clean_schema(schema: Any) -> Any:
    """Drop annotation keywords; property names are data, never dropped."""
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _DROP:
            continue
        if k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: _clean_schema(sub) for name, sub in v.items()}
        else:
            out[k] = _clean_schema(v)
    return out


def call_schema(tools: list[Tool], name: str = "") -> dict[str, Any]:
    """JSON schema of ``{"name": ..., "arguments": ...}`` for one tool (``name``) or
    any of ``tools``."""
    chosen = [t for t in tools if t.name == name] if name else tools
    if not chosen:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": _clean_schema(t.input_schema) or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tool_grammar(tools: list[Tool], name: str = "") -> Any:
    """A ``LlamaGrammar`` that admits exactly one valid call (see :func:`call_schema`)."""
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(call_schema(tools, name)), verbose=False)
