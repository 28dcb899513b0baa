# ruff: noqa: RUF001, RUF002  (DeepSeek writes its markers with fullwidth vertical bars)
"""DeepSeek: R1 (and its Qwen/Llama distills) and V3.1 write calls between
``<｜tool▁calls▁begin｜>`` and ``<｜tool▁calls▁end｜>``, one per
``<｜tool▁call▁begin｜>…<｜tool▁call▁end｜>``: R1 as
``function<｜tool▁sep｜>NAME\\n```json\\n{…}\\n```, V3.1 as ``NAME<｜tool▁sep｜>{…}``.
V3.2 and V4 write DSML: ``<｜DSML｜invoke name="N"><｜DSML｜parameter name="K"
string="true|false">V</｜DSML｜parameter>…`` inside ``<｜DSML｜function_calls>`` (V3.2)
or ``<｜DSML｜tool_calls>`` (V4). All reason in ``<think>…</think>``; a call opener
inside an unclosed reasoning block ends it."""

from __future__ import annotations

import json
from collections.abc import Callable

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family, has
from turnout.workers.formats.jsoncalls import args_object, loads
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import invoke_parser, invoke_so_far

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
EOS = "<｜end▁of▁sentence｜>"
THINK = (("<think>", "</think>"),)


def _one_call(text: str) -> Call:
    """``function<｜tool▁sep｜>NAME\\n```json\\n{…}```` (R1) or ``NAME<｜tool▁sep｜>{…}`` (V3.1)."""
    head, sep, rest = text.partition(SEP)
    if not sep:
        raise NotACall("no <｜tool▁sep｜>")
    head = head.strip()
    if head == "function" and not rest.lstrip().startswith("{") and "\n" in rest:
        name, _, args = rest.partition("\n")
        args = args.strip()
        if args.startswith("```"):
            args = args.split("\n", 1)[1] if "\n" in args else ""
            args = args.rsplit("```", 1)[0]
    else:
        name, args = head, rest
    name = name.strip()
    if not name or any(c in name for c in "<>\n{"):
        raise NotACall("no function name")
    return Call(name, dumps(args_object(loads(args.strip()) if args.strip() else {})))


def parse_calls(body: str, tools: ToolSet) -> list[Call]:
    """The calls of a ``<｜tool▁calls▁begin｜>`` section (or of one bare
    ``<｜tool▁call▁begin｜>…``): each ``<｜tool▁call▁begin｜>`` starts one."""
    parts = body.split(CALL_BEGIN)
    if parts[0].strip():
        raise NotACall("text before the first call")
    calls = []
    for part in parts[1:]:
        part = part.split(CALL_END, 1)[0] if CALL_END in part else part
        calls.append(_one_call(part))
    if not calls:
        raise NotACall("no call")
    return calls


def calls_so_far(body: str, tools: ToolSet) -> list[Call]:
    """``CallSyntax.partial`` for :func:`parse_calls`: a call is known once its
    name is written (R1: its line ended; V3.1: ``<｜tool▁sep｜>`` after it) and
    its arguments are the JSON after it."""
    parts = body.split(CALL_BEGIN)
    if parts[0].strip():
        return []
    out: list[Call] = []
    for part in parts[1:]:
        if CALL_END in part:
            try:
                out.append(_one_call(part.split(CALL_END, 1)[0]))
            except NotACall:
                break
            continue
        head, sep, rest = part.partition(SEP)
        if not sep:
            break
        if head.strip() == "function":
            name, nl, args = rest.partition("\n")
            if not nl:
                break
            brace = args.find("{")
            args = args[brace:] if brace >= 0 else ""
        else:
            name, args = head, rest.lstrip()
            if args and not args.startswith("{"):
                break
        name = name.strip()
        if not name or any(c in name for c in "<>\n{"):
            break
        out.append(Call(name, args))
        break
    return out


R1_CALLS = (
    CallSyntax(CALLS_BEGIN, parse_calls, close=(CALLS_END,), partial=lambda: calls_so_far),
    # a call without the section around it
    CallSyntax(CALL_BEGIN, parse_calls, close=(CALL_END,), keep_open=True, partial=lambda: calls_so_far),
)
R1 = Syntax(think=THINK, calls=R1_CALLS, drop=(CALLS_END, EOS))

DSML = "｜DSML｜"
_invoke = invoke_parser(DSML)


def _dsml(block: str) -> Syntax:
    return Syntax(
        think=THINK,
        calls=(CallSyntax(f"<{DSML}{block}>", _invoke, close=(f"</{DSML}{block}>",), partial=invoke_so_far(DSML)),),
        drop=(EOS,),
    )


def r1_call(name: str, args: str) -> str:
    return f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}{name}\n```json\n{args}\n```{CALL_END}{CALLS_END}"


def v31_call(name: str, args: str) -> str:
    return f"{CALLS_BEGIN}{CALL_BEGIN}{name}{SEP}{args}{CALL_END}{CALLS_END}"


def dsml_call(block: str) -> Callable[[str, str], str]:
    def write(name: str, args: str) -> str:
        params = ""
        for k, v in json.loads(args).items():
            is_str = isinstance(v, str)
            value = v if is_str else json.dumps(v, ensure_ascii=False)
            params += (f'<{DSML}parameter name="{k}" string="{"true" if is_str else "false"}">{value}'
                       f"</{DSML}parameter>\n")
        return (f"<{DSML}{block}>\n<{DSML}invoke name=\"{name}\">\n{params}</{DSML}invoke>\n"
                f"</{DSML}{block}>")

    return write


FAMILIES = [
    Family("deepseek-r1", "DeepSeek R1 and its distills: <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME "
           "```json{…}```, <think>",
           has(SEP, "```json"), R1, forced_call=r1_call, stops=(EOS,), order=20,
           examples=("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
                     "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "llama-cpp-deepseek-r1.jinja")),
    Family("deepseek-v3.1", "DeepSeek V3.1: <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}, <think>",
           has(SEP), R1, forced_call=v31_call, stops=(EOS,), order=21,
           examples=("deepseek-ai-DeepSeek-V3.1.jinja",)),
    Family("deepseek-v3.2", "DeepSeek V3.2: DSML <｜DSML｜function_calls><｜DSML｜invoke name=…>, <think>",
           has(DSML, "function_calls"), _dsml("function_calls"), forced_call=dsml_call("function_calls"),
           stops=(EOS,), order=20, examples=("deepseek-ai-DeepSeek-V3.2.jinja",)),
    Family("deepseek-v4", "DeepSeek V4: DSML <｜DSML｜tool_calls><｜DSML｜invoke name=…>, <think>",
           has(DSML, "tool_calls"), _dsml("tool_calls"), forced_call=dsml_call("tool_calls"),
           stops=(EOS,), order=21,
           examples=("deepseek-ai-DeepSeek-V4.jinja", "deepseek-ai-DeepSeek-V4-Flash-0731.jinja")),
]
