"""MiniCPM5: ``<function name="N"><param name="K">V</param></function>`` (a value
with ``<``, ``&`` or a newline in it wrapped in ``<![CDATA[…]]>``), ``<think>``."""

from __future__ import annotations

import json

from turnout.workers.formats.families import Family, has
from turnout.workers.formats.syntax import CallSyntax, Syntax
from turnout.workers.formats.xmlargs import invoke_parser, invoke_so_far

MINICPM5 = Syntax(
    think=(("<think>", "</think>"),),
    calls=(CallSyntax('<function name="', invoke_parser(invoke_tag="function", param_tag="param", cdata=True),
                      close=("</function>",), keep_open=True,
                      partial=invoke_so_far(invoke_tag="function", param_tag="param", cdata=True)),),
    drop=("</function>",),
    calls_in_reasoning=False,
)


def _param(k: str, v: object) -> str:
    if isinstance(v, str):
        text = f"<![CDATA[{v}]]>" if any(c in v for c in "<&\n") else v
    else:
        text = json.dumps(v, ensure_ascii=False)
    return f'<param name="{k}">{text}</param>'


def minicpm_call(name: str, args: str) -> str:
    params = "".join(_param(k, v) for k, v in json.loads(args).items())
    return f'<function name="{name}">{params}</function>'


FAMILIES = [
    Family("minicpm5", 'MiniCPM5: <function name="…"><param name="…">, CDATA values, <think>',
           has('<function name="', '<param name="'), MINICPM5, order=30, forced_call=minicpm_call,
           stops=("<|im_end|>",), examples=("openbmb-MiniCPM5-1B.jinja",)),
]
