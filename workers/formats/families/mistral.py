"""Mistral: every call starts with ``[TOOL_CALLS]``. Mistral Nemo writes a JSON list
after it (``[{"name", "arguments", "id"}]``); Mistral Small 3.2 writes
``NAME[CALL_ID]ID[ARGS]{…}``, Devstral and Ministral 3 ``NAME[ARGS]{…}``, one
``[TOOL_CALLS]`` per call. Ministral 3 (and Magistral) reason in
``[THINK]…[/THINK]``; what it writes there, calls included, is reasoning."""

from __future__ import annotations

import dataclasses
import hashlib

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family
from turnout.workers.formats.jsoncalls import (
    JsonAfter,
    JsonEnd,
    args_object,
    calls_from_json,
    loads,
)
from turnout.workers.formats.jsonpartial import HeadThenJson, JsonCallsSoFar, PartialFn
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
EOS = "</s>"


def _name_char(c: str) -> bool:
    return not c.isspace() and c not in '{}"'


class _CallEnd:
    """Where the call after ``[TOOL_CALLS]`` ends: a JSON list or object (Nemo),
    or ``NAME[CALL_ID]ID[ARGS]`` and a JSON object; a name with a space, a quote or
    a brace is no call. Resumable (see ``CallSyntax.scan``)."""

    def __init__(self) -> None:
        self.inner: JsonEnd | JsonAfter | None = None

    def __call__(self, s: str) -> int | None:
        if self.inner is None:
            head = s.lstrip()
            if not head:
                return None
            start = len(s) - len(head)
            self.inner = JsonEnd(start) if head[0] in "{[" else JsonAfter(ARGS, _name_char, start)
        return self.inner(s)


def parse_call(body: str, tools: ToolSet) -> list[Call]:
    s = body.strip()
    if s.startswith(("{", "[")):
        return calls_from_json(s, tools)
    head, sep, args = s.partition(ARGS)
    if not sep:
        raise NotACall("no [ARGS]")
    name, _, call_id = head.partition(CALL_ID)
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise NotACall("no function name")
    return [Call(name, dumps(args_object(loads(args) if args.strip() else {})), call_id.strip())]


def _head(head: str) -> tuple[str, str] | None:
    name, _, call_id = head.partition(CALL_ID)
    name = name.strip()
    if not name or not all(_name_char(c) for c in name):
        return None
    return name, call_id.strip()


class _SoFar:
    """``CallSyntax.partial`` for :func:`parse_call`."""

    def __init__(self) -> None:
        self.inner: PartialFn | None = None

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        if self.inner is None:
            s = body.lstrip()
            if not s:
                return []
            self.inner = JsonCallsSoFar() if s[0] in "{[" else HeadThenJson(ARGS, lambda b: [b], _head, parse_call)
        return self.inner(body, tools)


MISTRAL = Syntax(calls=(CallSyntax(TOOL_CALLS, parse_call, scan=_CallEnd, partial=_SoFar),), drop=(EOS,))
MINISTRAL = dataclasses.replace(MISTRAL, think=(("[THINK]", "[/THINK]"),), calls_in_reasoning=False)


def nemo_call(name: str, args: str) -> str:
    return f'{TOOL_CALLS}[{{"name": "{name}", "arguments": {args}, "id": "{_call_id(name, args)}"}}]'


def small_call(name: str, args: str) -> str:
    return f"{TOOL_CALLS}{name}{CALL_ID}{_call_id(name, args)}{ARGS}{args}"


def args_call(name: str, args: str) -> str:
    return f"{TOOL_CALLS}{name}{ARGS}{args}"


def _call_id(name: str, args: str) -> str:
    """Mistral's call ids are nine letters and digits."""
    return hashlib.sha256(f"{name}\0{args}".encode()).hexdigest()[:9]


FAMILIES = [
    Family("ministral-3", "Ministral 3 / Magistral: [THINK]…[/THINK], [TOOL_CALLS]NAME[ARGS]{…}",
           lambda t: "[THINK]" in t and TOOL_CALLS in t, MINISTRAL, forced_call=args_call, stops=(EOS,),
           order=30, examples=("mistralai-Ministral-3-14B-Reasoning-2512.jinja",)),
    Family("mistral-small-3.2", "Mistral Small 3.2: [TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{…}",
           lambda t: TOOL_CALLS in t and CALL_ID in t, MISTRAL, forced_call=small_call, stops=(EOS,),
           order=31, examples=("Mistral-Small-3.2-24B-Instruct-2506.jinja",)),
    Family("devstral", "Devstral: [TOOL_CALLS]NAME[ARGS]{…}",
           lambda t: TOOL_CALLS in t and ARGS in t, MISTRAL, forced_call=args_call, stops=(EOS,),
           order=32, examples=("unsloth-mistral-Devstral-Small-2507.jinja",)),
    Family("mistral-nemo", "Mistral Nemo: [TOOL_CALLS][{\"name\", \"arguments\", \"id\"}]",
           lambda t: TOOL_CALLS in t, MISTRAL, forced_call=nemo_call, stops=(EOS,),
           order=33, examples=("mistralai-Mistral-Nemo-Instruct-2407.jinja",)),
]
