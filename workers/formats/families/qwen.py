"""Qwen and Hermes: ``<tool_call>`` around a JSON call (Hermes, Qwen 2.5, QwQ,
MiMo, Granite 4, Reka) or around ``<function=…><parameter=…>`` tags (Qwen3-Coder,
Qwen3.5, Nemotron 3 Nano, Step 3.5); ``<think>`` reasoning. Seed-OSS writes the
same tags with a ``seed:`` prefix."""

from __future__ import annotations

import dataclasses

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family, has
from turnout.workers.formats.jsoncalls import calls_from_json
from turnout.workers.formats.jsonpartial import JsonCallsSoFar, PartialFn
from turnout.workers.formats.schema import ToolSet
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import FunctionTagsSoFar, parse_function_tags


def tool_call_body(body: str, tools: ToolSet) -> list[Call]:
    """The inside of ``<tool_call>…</tool_call>``: JSON, or function tags."""
    s = body.strip()
    if s.startswith(("{", "[", "```")):
        return calls_from_json(s, tools)
    if "<function=" in s:
        return parse_function_tags(s, tools)
    raise NotACall("neither JSON nor <function=…>")


class ToolCallSoFar:
    """``CallSyntax.partial`` for :func:`tool_call_body`: JSON calls or function tags."""

    def __init__(self) -> None:
        self.inner: PartialFn | None = None

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        if self.inner is None:
            s = body.lstrip()
            if not s:
                return []
            if s[0] in "{[`":
                self.inner = JsonCallsSoFar()
            elif s[0] == "<":
                self.inner = FunctionTagsSoFar()
            else:
                return []
        return self.inner(body, tools)


THINK = (("<think>", "</think>"),)

QWEN = Syntax(
    think=THINK,
    calls=(
        CallSyntax("<tool_call>", tool_call_body, close=("</tool_call>",), partial=ToolCallSoFar),
        # Qwen3-Coder often leaves out the first <tool_call>
        CallSyntax("<function=", parse_function_tags, close=("</function>",), keep_open=True,
                   partial=FunctionTagsSoFar),
    ),
    drop=("</tool_call>",),
)
# Hermes-style models mention calls while they think: only a call after the
# reasoning block counts (Qwen3.5 may skip </think> before its call).
HERMES = dataclasses.replace(QWEN, calls_in_reasoning=False)

SEED = Syntax(
    think=(("<seed:think>", "</seed:think>"),),
    calls=(
        CallSyntax("<seed:tool_call>", tool_call_body, close=("</seed:tool_call>",), partial=ToolCallSoFar),
        CallSyntax("<function=", parse_function_tags, close=("</function>",), keep_open=True,
                   partial=FunctionTagsSoFar),
    ),
    drop=("</seed:tool_call>",),
)


def xml_call(name: str, args: str) -> str:
    import json

    params = "".join(
        f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}\n</parameter>\n"
        for k, v in json.loads(args).items()
    )
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


def hermes_call(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


FAMILIES = [
    Family("seed-oss", "ByteDance Seed-OSS: <seed:tool_call><function=…><parameter=…>, <seed:think>",
           has("<seed:tool_call>"), SEED, order=10,
           forced_call=lambda n, a: xml_call(n, a).replace("tool_call>", "seed:tool_call>"),
           examples=("ByteDance-Seed-OSS.jinja",)),
    Family("qwen3-coder", "Qwen3-Coder, Qwen3.5, Nemotron 3 Nano, Step 3.5: <tool_call><function=…><parameter=…>",
           has("<function=", "<parameter="), QWEN, order=40, forced_call=xml_call,
           examples=("Qwen3-Coder.jinja", "Qwen3.5-4B.jinja", "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja",
                     "StepFun3.5-Flash.jinja")),
    Family("hermes", "Hermes / Qwen 2.5 / QwQ / Granite 4: <tool_call>{JSON}</tool_call>, <think>",
           has("<tool_call>"), HERMES, order=90, forced_call=hermes_call,
           examples=("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja",
                     "Qwen-QwQ-32B.jinja", "MiMo-VL.jinja", "ibm-granite-granite-4.0.jinja", "Reka-Edge.jinja")),
]
