"""The fallback: a model with no tool format of its own (a base model, a template
that knows no tools) is told to answer with a JSON object ``{"name", "arguments"}``
(see :func:`workers.formats.tooltext.tool_instructions`); one at the start of the
answer (fenced or not) is a call. ``<think>`` blocks are read too."""

from __future__ import annotations

from turnout.workers.formats.families import Family
from turnout.workers.formats.jsoncalls import calls_from_json, json_complete
from turnout.workers.formats.jsonpartial import JsonCallsSoFar
from turnout.workers.formats.schema import ToolSet
from turnout.workers.formats.syntax import CallSyntax, Syntax


def _bare(body: str, tools: ToolSet) -> list:  # type: ignore[type-arg]
    calls = calls_from_json(body, tools)
    # a JSON answer is a call only if it names an offered tool
    from turnout.workers.formats.events import NotACall

    if tools and any(c.name not in tools.schemas for c in calls):
        raise NotACall("names no offered tool")
    return calls


class _FenceEnd:
    """``CallSyntax.scan`` for a ```json fenced body: its closing fence (searched
    from where the last search stopped)."""

    def __init__(self) -> None:
        self.pos = 3

    def __call__(self, s: str) -> int | None:
        i = s.find("```", self.pos)
        if i < 0:
            self.pos = max(3, len(s) - 2)
            return None
        return i + 3


GENERIC = Syntax(
    think=(("<think>", "</think>"),),
    calls=(
        CallSyntax("{", _bare, keep_open=True, complete=json_complete, at_start_only=True, partial=JsonCallsSoFar),
        CallSyntax("[", _bare, keep_open=True, complete=json_complete, at_start_only=True, partial=JsonCallsSoFar),
        CallSyntax("```json", _bare, keep_open=True, scan=_FenceEnd, at_start_only=True, partial=JsonCallsSoFar),
        CallSyntax("<tool_call>", _bare, close=("</tool_call>",), partial=JsonCallsSoFar),
    ),
)


def json_call(name: str, args: str) -> str:
    return f'{{"name": "{name}", "arguments": {args}}}'


FAMILIES = [
    Family("generic", "any other model: a JSON object {\"name\", \"arguments\"} opening the answer",
           lambda t: True, GENERIC, order=1000, forced_call=json_call),
]
