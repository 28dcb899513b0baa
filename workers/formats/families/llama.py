"""Llama 3 and the models built on its chat format.

* Llama 3.1 / 3.2 / 3.3 answer a call with a bare JSON object, ``{"name": …,
  "parameters": {…}}``, and call built-in tools after ``<|python_tag|>``
  (``brave_search.call(query="…")``, or code for the interpreter).
* Functionary v3.1 writes ``<function=NAME>{…}</function>`` (and code after
  ``<|python_tag|>``); Firefunction v2 ``functools[{"name", "arguments"}, …]``.
* Functionary v3.2 writes messages to recipients: ``>>>all\\nTEXT`` for the user,
  ``>>>NAME\\n{…}`` for a call; its generation prompt ends with ``>>>``. It has a
  reader of its own (:class:`FunctionaryReader`).
"""

from __future__ import annotations

import ast
import re
from typing import Any

from turnout.workers.formats.events import Call, Event, NotACall, Text
from turnout.workers.formats.families import Family, StreamReader, has
from turnout.workers.formats.jsoncalls import (
    JsonEnd,
    args_object,
    calls_from_json,
    json_scan,
    loads,
)
from turnout.workers.formats.jsonpartial import JsonCallsSoFar
from turnout.workers.formats.reader import finished_call
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax, holdback

PYTHON_TAG, EOM, EOT = "<|python_tag|>", "<|eom_id|>", "<|eot_id|>"


def offered_calls(body: str, tools: ToolSet) -> list[Call]:
    """A bare JSON answer is a call only when it names an offered tool (else it
    is an answer that happens to be JSON)."""
    calls = calls_from_json(body, tools)
    if tools and any(c.name not in tools.schemas for c in calls):
        raise NotACall("names no offered tool")
    return calls


def python_tag_body(body: str, tools: ToolSet) -> list[Call]:
    """After ``<|python_tag|>``: JSON calls, a built-in tool's ``NAME.call(k=v, …)``,
    or code for the interpreter (the ``python`` tool)."""
    s = body.strip()
    if not s:
        raise NotACall("nothing after <|python_tag|>")
    if s.startswith("{"):
        return calls_from_json(s, tools)
    m = re.fullmatch(r"([A-Za-z_][\w-]*)\.call\((.*)\)", s, re.S)
    if m is not None:
        try:
            node = ast.parse(f"f({m.group(2)})", mode="eval").body
            assert isinstance(node, ast.Call) and not node.args
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except (SyntaxError, ValueError, AssertionError):
            pass
        else:
            return [Call(m.group(1), dumps(args))]
    if s.startswith('"'):
        try:
            code = loads(s)
        except NotACall:
            code = s
        if isinstance(code, str):
            return [Call("python", dumps({"code": code}))]
    return [Call("python", dumps({"code": s}))]


class _PythonTagSoFar:
    """``CallSyntax.partial`` for :func:`python_tag_body`: its JSON calls (code
    for the interpreter is sent whole)."""

    def __init__(self) -> None:
        self.inner = JsonCallsSoFar()

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        return self.inner(body, tools) if body.lstrip().startswith("{") else []


LLAMA3 = Syntax(
    calls=(
        CallSyntax("{", offered_calls, keep_open=True, scan=json_scan, at_start_only=True, partial=JsonCallsSoFar),
        CallSyntax(PYTHON_TAG, python_tag_body, close=(EOM, EOT), partial=_PythonTagSoFar),
    ),
    drop=(EOM, EOT),
)

_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*)", re.S)


def function_json(body: str, tools: ToolSet) -> list[Call]:
    """``<function=NAME>{…}`` (the closing tag already taken off)."""
    m = _FUNCTION.fullmatch(body.strip())
    if m is None:
        raise NotACall("not <function=NAME>")
    args = m.group(2).strip()
    return [Call(m.group(1).strip(), dumps(args_object(loads(args) if args else {})))]


def function_json_so_far(body: str, tools: ToolSet) -> list[Call]:
    """``CallSyntax.partial`` for :func:`function_json`."""
    m = _FUNCTION_TAG.match(body)
    if m is None:
        return []
    args = body[m.end():].lstrip()
    return [Call(m.group(1).strip(), args)] if args.startswith("{") else []


_FUNCTION_TAG = re.compile(r"\s*<function=([^>\n]+)>")

FUNCTIONARY_V31 = Syntax(
    calls=(
        CallSyntax("<function=", function_json, close=("</function>",), keep_open=True,
                   partial=lambda: function_json_so_far),
        CallSyntax(PYTHON_TAG, python_tag_body, close=(EOM, EOT), partial=_PythonTagSoFar),
    ),
    drop=(EOM, EOT),
)

FUNCTOOLS = "functools"


def functools_calls(body: str, tools: ToolSet) -> list[Call]:
    return calls_from_json(body.removeprefix(FUNCTOOLS), tools)


class _FunctoolsSoFar:
    """``CallSyntax.partial`` for :func:`functools_calls`."""

    def __init__(self) -> None:
        self.inner = JsonCallsSoFar()

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        return self.inner(body.removeprefix(FUNCTOOLS), tools)


FIREFUNCTION = Syntax(
    calls=(CallSyntax(FUNCTOOLS + "[", functools_calls, keep_open=True,
                      scan=lambda: JsonEnd(len(FUNCTOOLS)), partial=_FunctoolsSoFar),),
    drop=(EOT,),
)


# ---------------------------------------------------------------- functionary v3.2

RECIPIENT = ">>>"
_NAME = re.compile(r"[A-Za-z_][\w.-]*")


class FunctionaryReader(StreamReader):
    """Functionary v3.2's messages: ``>>>RECIPIENT\\n`` then text (recipient
    ``all``) or a call's JSON arguments (``python`` may take raw code). The
    generation prompt ends with ``>>>``, so the output starts with a recipient;
    ``reasoning_open`` (see :func:`prompt_open`) says when the prompt already
    opened a text message instead (a continuation)."""

    def __init__(self, tools: ToolSet, *, reasoning_open: str = "", raw_reasoning: bool = False,
                 tools_enabled: bool = True) -> None:
        self.tools = tools
        self.tools_enabled = tools_enabled
        self._buf = ""
        self._name = ""
        self._json: JsonEnd | None = None  # where the current call's JSON arguments end
        self._searched = 0  # how far the current call's body was searched for the next ">>>"
        self._mode = "text" if reasoning_open.startswith(RECIPIENT + "all\n") else "recipient"
        self._committed = False

    def partial_calls(self) -> list[Call]:
        """The call being written, once its JSON arguments begin (see
        :meth:`~workers.formats.reader.Reader.partial_calls`)."""
        if self._mode != "call" or (self.tools and self._name not in self.tools.schemas):
            return []
        s = self._buf.lstrip()
        return [Call(self._name, s)] if s.startswith("{") else []

    def commit(self) -> None:
        if self._mode == "call":
            self._committed = True

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        out: list[Event] = []
        self._run(out, final=False)
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        self._run(out, final=True)
        return out

    def _run(self, out: list[Event], final: bool) -> None:
        while True:
            before = (self._mode, len(self._buf))
            getattr(self, f"_step_{self._mode}")(out, final)
            if (self._mode, len(self._buf)) == before:
                return

    @staticmethod
    def _text(out: list[Event], text: str) -> None:
        if not text:
            return
        if out and isinstance(out[-1], Text):
            out[-1].text += text
        else:
            out.append(Text(text))

    def _step_recipient(self, out: list[Event], final: bool) -> None:
        buf = self._buf
        if RECIPIENT.startswith(buf) and not final:
            return
        line = buf.removeprefix(RECIPIENT)
        nl = line.find("\n")
        name = (line if nl < 0 else line[:nl]).strip()
        if nl < 0 and not final and len(line) < 64 and (not name or _NAME.fullmatch(name)):
            return  # the recipient is still coming
        if nl >= 0 and name == "all":
            self._buf, self._mode = line[nl + 1:], "text"
        elif nl >= 0 and self.tools_enabled and _NAME.fullmatch(name) and name != "all":
            self._buf, self._mode, self._name, self._json = line[nl + 1:], "call", name, None
            self._searched = 0
        else:  # not a recipient: the model is just talking
            self._buf, self._mode = line, "text"

    def _step_text(self, out: list[Event], final: bool) -> None:
        buf = self._buf
        i = buf.find(RECIPIENT)
        if i >= 0:
            self._text(out, buf[:i])
            self._buf, self._mode = buf[i:], "recipient"
            return
        keep = 0 if final else holdback(buf, (RECIPIENT,))
        self._text(out, buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep:]

    def _step_call(self, out: list[Event], final: bool) -> None:
        buf = self._buf
        if self._json is None and buf.lstrip().startswith("{"):
            self._json = JsonEnd()
        end = self._json(buf) if self._json is not None else None
        if end is None:
            i = buf.find(RECIPIENT, self._searched)
            if i >= 0:
                end = i
            elif final:
                end = len(buf)
            else:
                self._searched = max(0, len(buf) - len(RECIPIENT) + 1)
                return
        body = buf[:end]
        self._buf, self._mode = buf[end:], "after_call"
        committed, self._committed = self._committed, False
        try:
            out.append(self._parse(self._name, body))
        except NotACall:
            if committed:  # announced: made with its finished arguments
                out.append(finished_call(Call(self._name, body.lstrip())))
            else:
                self._text(out, body)

    def _step_after_call(self, out: list[Event], final: bool) -> None:
        """Between a call and the next message: layout."""
        s = self._buf.lstrip(" \t\r\n")
        if s:
            self._buf, self._mode = s, "recipient" if s.startswith(RECIPIENT[: len(s)]) else "text"
        elif final:
            self._buf = ""

    def _parse(self, name: str, body: str) -> Call:
        s = body.strip()
        if s.startswith("{"):
            return Call(name, dumps(args_object(loads(s))))
        if name == "python" and s:
            return Call(name, dumps({"code": s}))
        raise NotACall("arguments are not a JSON object")


def prompt_open(prompt: str) -> str:
    """What the prompt leaves open: its last message to a recipient, when it is
    the end of the prompt (``>>>`` or, in a continuation, ``>>>all\\nTEXT``)."""
    i = prompt.rfind(RECIPIENT)
    tail = prompt[i:] if i >= 0 else ""
    return tail if tail and EOT not in tail else ""


def _reader(tools: ToolSet, **opts: Any) -> FunctionaryReader:
    return FunctionaryReader(tools, **opts)


def llama3_call(name: str, args: str) -> str:
    return f'{{"name": "{name}", "parameters": {args}}}'


FAMILIES = [
    Family("functionary-v3.2", "Functionary v3.2: >>>all\\nTEXT, >>>NAME\\n{…}",
           has(">>>all", ">>>${recipient}"), reader=_reader, prompt_open=prompt_open,
           forced_call=lambda n, a: f"{n}\n{a}", stops=(EOT,), order=20,
           examples=("meetkai-functionary-medium-v3.2.jinja",)),
    Family("functionary-v3.1", "Functionary v3.1: <function=NAME>{…}</function>, <|python_tag|>code",
           has("<function=", PYTHON_TAG), FUNCTIONARY_V31,
           forced_call=lambda n, a: f"<function={n}>{a}</function>", stops=(EOT, EOM), order=25,
           examples=("meetkai-functionary-medium-v3.1.jinja",)),
    Family("firefunction-v2", "Firefunction v2: functools[{\"name\", \"arguments\"}, …]",
           has(FUNCTOOLS + "["), FIREFUNCTION,
           forced_call=lambda n, a: f' {FUNCTOOLS}[{{"name": "{n}", "arguments": {a}}}]', stops=(EOT,), order=25,
           examples=("fireworks-ai-llama-3-firefunction-v2.jinja",)),
    Family("llama3", "Llama 3.1 / 3.2 / 3.3: a JSON {\"name\", \"parameters\"} answer, <|python_tag|> built-in tools",
           has('"parameters": dictionary of argument name'), LLAMA3, forced_call=llama3_call,
           stops=(EOT, EOM), order=60,
           examples=("meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja",
                     "meta-llama-Llama-3.3-70B-Instruct.jinja")),
]
