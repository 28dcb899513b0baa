"""Kimi (Moonshot). K2 (Instruct, Thinking) writes calls as
``<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:N
<|tool_call_argument_begin|>{…}<|tool_call_end|>…<|tool_calls_section_end|>`` (the
call id is ``functions.NAME:N``) and reasons in ``<think>``; it may call from inside
an unclosed reasoning block, or leave out the section markers.

K3 writes everything as tags, ``<|open|>TAG attrs<|sep|>…<|close|>TAG<|sep|>``: a
message is ``think``, ``response`` and ``tools`` sections; a call is
``<|open|>call tool="NAME" index="N"<|sep|>`` with one ``<|open|>argument key="K"
type="T"<|sep|>V<|close|>argument<|sep|>`` per argument (or one ``json`` block).
The sections are structure: with raw reasoning, the reasoning text is kept but not
its tags (as llama.cpp does)."""

from __future__ import annotations

import html
import json
import re

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family, has
from turnout.workers.formats.jsoncalls import JsonAfter, args_object, loads
from turnout.workers.formats.jsonpartial import HeadThenJson
from turnout.workers.formats.schema import ToolSet, coerce, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import open_args

# ---------------------------------------------------------------- K2

SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CALL_BEGIN, ARGS_BEGIN, CALL_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
IM_END = "<|im_end|>"


def _k2_name(call_id: str) -> str:
    """``functions.NAME:N`` -> NAME."""
    name = call_id.removeprefix("functions.")
    head, colon, n = name.rpartition(":")
    return head if colon and n.isdigit() else name


def parse_k2(body: str, tools: ToolSet) -> list[Call]:
    """The calls of a section, or one bare ``<|tool_call_begin|>…`` call."""
    parts = body.replace(CALL_END, "").split(CALL_BEGIN)
    if parts[0].strip():
        raise NotACall("text before the first call")
    calls = []
    for part in parts[1:]:
        head, sep, args = part.partition(ARGS_BEGIN)
        call_id = head.strip()
        name = _k2_name(call_id)
        if not sep or not name or any(c.isspace() or c in "<>{" for c in name):
            raise NotACall("not functions.NAME:N<|tool_call_argument_begin|>")
        calls.append(Call(name, dumps(args_object(loads(args) if args.strip() else {})), call_id))
    if not calls:
        raise NotACall("no call")
    return calls


def _k2_head(head: str) -> tuple[str, str] | None:
    call_id = head.strip()
    name = _k2_name(call_id)
    if not name or any(c.isspace() or c in "<>{" for c in name):
        return None
    return name, call_id


def _k2_parts(body: str) -> list[str]:
    parts = body.split(CALL_BEGIN)
    return parts[1:] if not parts[0].strip() else []


def _k2_so_far() -> HeadThenJson:
    return HeadThenJson(ARGS_BEGIN, _k2_parts, _k2_head, lambda part, tools: parse_k2(CALL_BEGIN + part, tools),
                        end=CALL_END)


K2 = Syntax(
    think=(("<think>", "</think>"),),
    calls=(
        CallSyntax(SECTION_BEGIN, parse_k2, close=(SECTION_END,), partial=_k2_so_far),
        # a bare call ends with its arguments' JSON object
        CallSyntax(CALL_BEGIN, parse_k2, keep_open=True, scan=lambda: JsonAfter(ARGS_BEGIN), partial=_k2_so_far),
    ),
    drop=(CALL_END, SECTION_END, IM_END),
)


def k2_call(name: str, args: str) -> str:
    return (f"{SECTION_BEGIN}{CALL_BEGIN}functions.{name}:0{ARGS_BEGIN}{args}{CALL_END}"
            f"{SECTION_END}")


# ---------------------------------------------------------------- K3

OPEN, CLOSE, SEP, EOM = "<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>"


def _open(tag: str) -> str:
    return f"{OPEN}{tag}{SEP}"


def _close(tag: str) -> str:
    return f"{CLOSE}{tag}{SEP}"


_CALL = re.compile(r'<\|open\|>call tool="([^"]*)"[^<]*?<\|sep\|>(.*?)(?:<\|close\|>call<\|sep\|>|$)', re.S)
_ARG = re.compile(r'<\|open\|>argument key="([^"]*)"([^<]*?)<\|sep\|>(.*?)<\|close\|>argument<\|sep\|>', re.S)
_JSON = re.compile(r"<\|open\|>json[^<]*?<\|sep\|>(.*?)<\|close\|>json<\|sep\|>", re.S)
_TYPE = re.compile(r'type="([^"]*)"')


def parse_k3(body: str, tools: ToolSet) -> list[Call]:
    """The inside of ``<|open|>tools<|sep|>…<|close|>tools<|sep|>``. An argument
    is typed by the tool's schema, else by its ``type`` attribute."""
    calls = []
    for cm in _CALL.finditer(body):
        name = html.unescape(cm.group(1))
        inner = cm.group(2)
        jm = _JSON.search(inner)
        if jm is not None:
            calls.append(Call(name, dumps(args_object(loads(jm.group(1))))))
            continue
        args = {}
        for am in _ARG.finditer(inner):
            key, raw = html.unescape(am.group(1)), am.group(3)
            if tools.param(name, key) is not None:
                args[key] = tools.coerce(name, key, raw)
            else:
                tm = _TYPE.search(am.group(2))
                args[key] = coerce({"type": tm.group(1)} if tm else None, raw)
        calls.append(Call(name, dumps(args)))
    if not calls:
        raise NotACall("no call")
    return calls


_CALL_HEAD = re.compile(r'<\|open\|>call tool="([^"]*)"[^<]*?<\|sep\|>')
_ARG_HEAD = re.compile(r'<\|open\|>argument key="([^"]*)"[^<]*?<\|sep\|>')
_JSON_HEAD = re.compile(r"\s*<\|open\|>json[^<]*?<\|sep\|>")


class K3SoFar:
    """``CallSyntax.partial`` for :func:`parse_k3`: a call is known once its
    ``call`` tag is written; an argument counts once its closing tag is (a
    ``json`` block's arguments are its JSON so far). One per body: the finished
    arguments are read again only when one more is finished."""

    def __init__(self) -> None:
        self.key: tuple[int, int] = (-1, -1)
        self.calls: list[Call] = []

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        at = body.rfind(OPEN + "call ")
        last = _CALL_HEAD.match(body, at) if at >= 0 else None
        if last is None:
            heads = list(_CALL_HEAD.finditer(body))
            if not heads:
                return []
            last = heads[-1]
        try:
            if body.find(_close("call"), last.end()) >= 0:
                done = parse_k3(body[: last.start()], tools) if _CALL_HEAD.search(body, 0, last.start()) else []
                return [*done, parse_k3(body[last.start():], tools)[-1]]
            jm = _JSON_HEAD.match(body, last.end())
            if jm is not None:
                done = parse_k3(body[: last.start()], tools) if _CALL_HEAD.search(body, 0, last.start()) else []
                name = html.unescape(last.group(1))
                return [*done, Call(name, body[jm.end():].split(CLOSE, 1)[0].lstrip())]
            end = body.rfind(_close("argument"), last.end())
            upto = last.end() if end < 0 else end + len(_close("argument"))
            if (last.start(), upto) != self.key:
                done = parse_k3(body[: last.start()], tools) if _CALL_HEAD.search(body, 0, last.start()) else []
                self.calls = [*done, parse_k3(body[last.start():upto], tools)[-1]]
                self.key = (last.start(), upto)
        except NotACall:
            self.key, self.calls = (-1, -1), []
            return []
        *done, current = self.calls
        am = _ARG_HEAD.search(body, upto)
        return [*done, Call(current.name, open_args(current, html.unescape(am.group(1)) if am else None))]


K3 = Syntax(
    think=((_open("think"), _close("think")),),
    think_ends=(_open("response"),),
    think_anywhere=True,
    raw_markers=False,
    calls=(CallSyntax(_open("tools"), parse_k3, close=(_close("tools"),), partial=K3SoFar),),
    drop=(f'{OPEN}message role="assistant"{SEP}', _open("response"), _close("response"), _close("message"), EOM),
)


def _attr(v: str) -> str:
    return v.replace("&", "&amp;").replace('"', "&quot;")


def k3_call(name: str, args: str) -> str:
    parts = []
    for k, v in json.loads(args).items():
        t = ("boolean" if isinstance(v, bool) else "null" if v is None else "number" if isinstance(v, int | float)
             else "string" if isinstance(v, str) else "object" if isinstance(v, dict) else "array")
        value = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        parts.append(f'{OPEN}argument key="{_attr(k)}" type="{t}"{SEP}{value}{_close("argument")}')
    return (f'{_open("tools")}{OPEN}call tool="{_attr(name)}" index="1"{SEP}{"".join(parts)}{_close("call")}'
            f'{_close("tools")}{_close("message")}')


FAMILIES = [
    Family("kimi-k2", "Kimi K2: <|tool_call_begin|>functions.NAME:N<|tool_call_argument_begin|>{…}, <think>",
           has(SECTION_BEGIN, CALL_BEGIN), K2, forced_call=k2_call, stops=(IM_END,), order=20,
           examples=("moonshotai-Kimi-K2.jinja", "Kimi-K2-Instruct.jinja", "Kimi-K2-Thinking.jinja")),
    Family("kimi-k3", "Kimi K3: <|open|>think/response/tools<|sep|> sections, <|open|>call tool=…",
           has(OPEN, CLOSE, EOM), K3, forced_call=k3_call, stops=(EOM,), order=20,
           examples=("Kimi-K3.jinja",)),
]
