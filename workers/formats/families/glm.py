"""GLM and the models that write its calls: ``<tool_call>NAME<arg_key>KEY</arg_key>
<arg_value>VALUE</arg_value>…</tool_call>`` (values typed by the tool's schema),
``<think>`` reasoning. GLM 4.5-4.7 and Spark 2.5; Poolside Laguna (ends its turn
with ``</assistant>``); Ling 3.0 (``<role>ASSISTANT</role>`` turns; a call may
come before the reasoning block is closed, and ends it)."""

from __future__ import annotations

import dataclasses
import json

from turnout.workers.formats.families import Family, has
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import ArgKeyValueSoFar, parse_arg_key_value

THINK = (("<think>", "</think>"),)
SPARK_END = "<\uff5cend\u2581of\u2581sentence\uff5c>"  # Spark 2.5 ends its turn with DeepSeek's marker

GLM = Syntax(
    think=THINK,
    calls=(CallSyntax("<tool_call>", parse_arg_key_value, close=("</tool_call>",),
                      partial=ArgKeyValueSoFar),),
    drop=("</tool_call>",),
    # the reasoning of these models talks about calls; only one after it counts
    calls_in_reasoning=False,
)
LAGUNA = dataclasses.replace(GLM, drop=(*GLM.drop, "</assistant>"))
# llama.cpp reads Ling's reasoning up to </think> or a call, and keeps neither
# marker in the text when reasoning is not extracted
LING = dataclasses.replace(GLM, drop=(*GLM.drop, "<|role_end|>"), calls_in_reasoning=True,
                           raw_markers=False)


def arg_key_call(name: str, args: str) -> str:
    """One call as these templates render one: strings as they are, other values as JSON."""
    pairs = "".join(
        f"<arg_key>{k}</arg_key><arg_value>{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
        "</arg_value>"
        for k, v in json.loads(args).items()
    )
    return f"<tool_call>{name}{pairs}</tool_call>"


FAMILIES = [
    Family("ling", "Ling 3.0: <role>ASSISTANT</role>, <tool_call>NAME<arg_key>…<arg_value>…, <think>",
           has("<role>ASSISTANT</role>", "<arg_key>"), LING, order=20, forced_call=arg_key_call,
           stops=("<|role_end|>",), examples=("inclusionai-ling-3.0-flash.jinja",)),
    Family("laguna", "Poolside Laguna: <tool_call>NAME<arg_key>…<arg_value>…, <think>, </assistant>",
           has("<arg_key>", "</assistant>"), LAGUNA, order=25, forced_call=arg_key_call,
           stops=("</assistant>",),
           examples=("poolside-Laguna-S-2.1.jinja", "poolside-Laguna-XS-2.1.jinja", "poolside-Laguna-XS.2.jinja")),
    Family("glm", "GLM 4.5-4.7, Spark 2.5: <tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>, <think>",
           has("<arg_key>"), GLM, order=30, forced_call=arg_key_call,
           stops=("<|user|>", "<|observation|>", SPARK_END),
           examples=("GLM-4.6.jinja", "GLM-4.7-Flash.jinja", "Spark2.5.jinja")),
]
