"""Families whose calls are JSON between markers of their own.

* Nemotron Nano v2: ``<TOOLCALL>[{"name", "arguments"}]</TOOLCALL>``, ``<think>``.
* Granite 3.3: ``<|tool_call|>[{"name", "arguments"}]``; ``<think>`` and its
  answer in ``<response>…</response>``.
* Apertus: ``<|tools_prefix|>[{"NAME": {…}}]<|tools_suffix|>`` (the name is the
  key), reasoning in ``<|inner_prefix|>…<|inner_suffix|>``.
* Apriel 1.5 / 1.6: ``<tool_calls>[{"name", "arguments"}]</tool_calls>``; 1.6
  reasons from the start of its turn (its template writes "Here are my reasoning
  steps:") to ``[BEGIN FINAL RESPONSE]``.
* GigaChat 3: a call is a message of its own, ``<|message_sep|>\\n\\nfunction
  call<|role_sep|>\\n{"name", "arguments"}``; GigaChat 3.1 writes
  ``<|function_call|>{"name", "arguments"}``.
"""

from __future__ import annotations

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.families import Family, has
from turnout.workers.formats.jsoncalls import args_object, calls_from_json, json_scan, loads
from turnout.workers.formats.jsonpartial import JsonCallsSoFar
from turnout.workers.formats.schema import ToolSet, dumps
from turnout.workers.formats.syntax import CallSyntax, Syntax

THINK = (("<think>", "</think>"),)


def json_calls(body: str, tools: ToolSet) -> list[Call]:
    return calls_from_json(body, tools)


NEMOTRON_V2 = Syntax(
    think=THINK,
    calls=(CallSyntax("<TOOLCALL>", json_calls, close=("</TOOLCALL>",), partial=JsonCallsSoFar),),
    drop=("<SPECIAL_12>",),
)

GRANITE_33 = Syntax(
    think=THINK,
    calls=(CallSyntax("<|tool_call|>", json_calls, scan=json_scan, partial=JsonCallsSoFar),),
    drop=("<response>", "</response>", "<|end_of_text|>"),
)


def name_keyed_calls(body: str, tools: ToolSet) -> list[Call]:
    """``[{"NAME": {arguments}}, …]`` (Apertus)."""
    value = loads(body.strip())
    calls = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict) or len(item) != 1:
            raise NotACall("a call is {NAME: {arguments}}")
        (name, args), = item.items()
        calls.append(Call(name, dumps(args_object(args))))
    if not calls:
        raise NotACall("no call")
    return calls


APERTUS = Syntax(
    think=(("<|inner_prefix|>", "<|inner_suffix|>"),),
    calls=(CallSyntax("<|tools_prefix|>", name_keyed_calls, close=("<|tools_suffix|>",),
                      partial=lambda: JsonCallsSoFar(name_keyed=True)),),
    drop=("<|assistant_end|>",),
)

APRIEL_CALLS = (CallSyntax("<tool_calls>", json_calls, close=("</tool_calls>",), partial=JsonCallsSoFar),)
APRIEL_15 = Syntax(calls=APRIEL_CALLS, drop=("<|end|>",))
APRIEL_16 = Syntax(
    think=(("<|begin_assistant|>\n", "[BEGIN FINAL RESPONSE]"),),
    think_preludes=("Here are my reasoning steps:\n",),
    calls=APRIEL_CALLS,
    calls_in_reasoning=False,
    drop=("<|end|>",),
)

GIGACHAT_CALL = "<|message_sep|>\n\nfunction call<|role_sep|>\n"
GIGACHAT_3 = Syntax(
    calls=(CallSyntax(GIGACHAT_CALL, json_calls, scan=json_scan, partial=JsonCallsSoFar),),
    drop=("<|message_sep|>\n\n", "<|message_sep|>"),
)
GIGACHAT_31 = Syntax(
    calls=(CallSyntax("<|function_call|>", json_calls, scan=json_scan, partial=JsonCallsSoFar),),
    drop=("<|message_sep|>\n\n", "<|message_sep|>"),
)


def named(name: str, args: str, key: str = "arguments") -> str:
    return f'{{"name": "{name}", "{key}": {args}}}'


FAMILIES = [
    Family("nemotron-nano-v2", "NVIDIA Nemotron Nano v2: <TOOLCALL>[{\"name\", \"arguments\"}]</TOOLCALL>, <think>",
           has("<TOOLCALL>", "</TOOLCALL>"), NEMOTRON_V2,
           forced_call=lambda n, a: f"<TOOLCALL>[{named(n, a)}]</TOOLCALL>", stops=("<SPECIAL_12>",), order=50,
           examples=("NVIDIA-Nemotron-Nano-v2.jinja",)),
    Family("granite-3.3", "IBM Granite 3.3: <|tool_call|>[{\"name\", \"arguments\"}], <think>, <response>",
           has("<|tool_call|>", "<|start_of_role|>"), GRANITE_33,
           forced_call=lambda n, a: f"<|tool_call|>[{named(n, a)}]", stops=("<|end_of_text|>",), order=50,
           examples=("ibm-granite-granite-3.3-2B-Instruct.jinja",)),
    Family("apertus", "Apertus: <|tools_prefix|>[{NAME: {…}}]<|tools_suffix|>, <|inner_prefix|> reasoning",
           has("<|tools_prefix|>", "<|tools_suffix|>"), APERTUS,
           forced_call=lambda n, a: f'<|tools_prefix|>[{{"{n}": {a}}}]<|tools_suffix|>',
           stops=("<|assistant_end|>",), order=50, examples=("Apertus-8B-Instruct.jinja",)),
    Family("apriel-1.6", "Apriel 1.6: reasoning up to [BEGIN FINAL RESPONSE], <tool_calls>[…]</tool_calls>",
           has("<|begin_assistant|>", "[BEGIN FINAL RESPONSE]", "<tool_calls>"), APRIEL_16,
           forced_call=lambda n, a: f"<tool_calls>[{named(n, a)}]</tool_calls>", stops=("<|end|>",), order=50,
           examples=("Apriel-1.6-15b-Thinker-fixed.jinja",)),
    Family("apriel-1.5", "Apriel 1.5: <tool_calls>[{\"name\", \"arguments\"}]</tool_calls>",
           has("<|assistant|>", "<tool_calls>", "</tool_calls>"), APRIEL_15,
           forced_call=lambda n, a: f"<tool_calls>[{named(n, a)}]</tool_calls>", stops=("<|end|>",), order=51,
           examples=("unsloth-Apriel-1.5.jinja",)),
    Family("gigachat-3.1", "GigaChat 3.1: <|function_call|>{\"name\", \"arguments\"}",
           has("<|role_sep|>", "<|message_sep|>", "<|function_call|>"), GIGACHAT_31,
           forced_call=lambda n, a: f"<|function_call|>{named(n, a)}", stops=("<|message_sep|>",), order=50,
           examples=("GigaChat3.1-10B-A1.8B.jinja",)),
    # GigaChat 3's call follows its message end, so that cannot stop a turn
    Family("gigachat-3", "GigaChat 3: <|message_sep|> then a 'function call' message {\"name\", \"arguments\"}",
           has("<|role_sep|>", "<|message_sep|>"), GIGACHAT_3,
           forced_call=lambda n, a: f"{GIGACHAT_CALL}{named(n, a)}", order=51,
           examples=("GigaChat3-10B-A1.8B.jinja",)),
]
