"""Cohere. Command R7B and Command A (Cohere2 MoE) reason in
``<|START_THINKING|>…<|END_THINKING|>``, answer in ``<|START_RESPONSE|>`` /
``<|START_TEXT|>`` and call tools with a JSON list between ``<|START_ACTION|>`` and
``<|END_ACTION|>``: ``[{"tool_call_id": "0", "tool_name": …, "parameters": {…}}]``.
Command R+ writes ``Action:`` and a fenced JSON list of ``{"tool_name",
"parameters"}``."""

from __future__ import annotations

from turnout.workers.formats.events import Call
from turnout.workers.formats.families import Family, has
from turnout.workers.formats.jsoncalls import JsonEnd, calls_from_json
from turnout.workers.formats.jsonpartial import json_calls_so_far
from turnout.workers.formats.schema import ToolSet
from turnout.workers.formats.syntax import CallSyntax, Syntax

START_ACTION, END_ACTION = "<|START_ACTION|>", "<|END_ACTION|>"
THINK = (("<|START_THINKING|>", "<|END_THINKING|>"),)
END_TURN = "<|END_OF_TURN_TOKEN|>"


_KEYS = {"name_keys": ("tool_name", "name"), "args_keys": ("parameters", "arguments"), "id_keys": ("tool_call_id", "id")}


def parse_action(body: str, tools: ToolSet) -> list[Call]:
    return calls_from_json(body, tools, **_KEYS)


ACTION = CallSyntax(START_ACTION, parse_action, close=(END_ACTION,), partial=json_calls_so_far(**_KEYS))


R7B = Syntax(
    think=THINK,
    calls=(ACTION,),
    drop=("<|START_RESPONSE|>", "<|END_RESPONSE|>", END_TURN),
)
COMMAND_A = Syntax(
    think=THINK,
    think_ends=("<|START_TEXT|>",),  # the model may go on to its answer without closing its reasoning
    calls=(ACTION,),
    drop=("<|START_TEXT|>", "<|END_TEXT|>", END_TURN),
)


class _ActionEnd:
    """After ``Action:``: a fenced (or bare) JSON list; 0 (not a call) for
    anything else. Resumable (see ``CallSyntax.scan``)."""

    def __init__(self) -> None:
        self.fence_from = -1  # where to look for the closing fence
        self.json: JsonEnd | None = None

    def __call__(self, s: str) -> int | None:
        if self.fence_from >= 0:
            j = s.find("```", self.fence_from)
            if j < 0:
                self.fence_from = max(self.fence_from, len(s) - 2)
                return None
            return j + 3
        if self.json is not None:
            return self.json(s)
        t = s.lstrip()
        at = len(s) - len(t)
        if not t or (len(t) < 3 and "```".startswith(t)):
            return None
        if t.startswith("```"):
            self.fence_from = at + 3
            return self(s)
        if t[0] in "[{":
            self.json = JsonEnd(at)
            return self.json(s)
        return 0


R_PLUS = Syntax(
    calls=(CallSyntax("Action:", parse_action, scan=_ActionEnd, partial=json_calls_so_far(**_KEYS)),),
    drop=("<|CHATBOT_TOKEN|>", END_TURN),
)


def action_call(name: str, args: str) -> str:
    return f'{START_ACTION}[\n    {{"tool_call_id": "0", "tool_name": "{name}", "parameters": {args}}}\n]{END_ACTION}'


def r_plus_call(name: str, args: str) -> str:
    return f'Action:\n```json\n[\n    {{\n        "tool_name": "{name}",\n        "parameters": {args}\n    }}\n]\n```'


FAMILIES = [
    Family("command-a", "Cohere Command A / Cohere2 MoE: <|START_THINKING|>, <|START_TEXT|>, <|START_ACTION|>[…]",
           has("<|START_TEXT|>", START_ACTION), COMMAND_A, forced_call=action_call, stops=(END_TURN,),
           order=20, examples=("Cohere2MoE.jinja",)),
    Family("command-r7b", "Cohere Command R7B: <|START_THINKING|>, <|START_RESPONSE|>, <|START_ACTION|>[…]",
           has("<|START_RESPONSE|>", START_ACTION), R7B, forced_call=action_call, stops=(END_TURN,),
           order=21, examples=("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",)),
    Family("command-r-plus", "Cohere Command R+: Action: ```json [{\"tool_name\", \"parameters\"}]```",
           has("<|CHATBOT_TOKEN|>", "Action:"), R_PLUS, forced_call=r_plus_call, stops=(END_TURN,),
           order=22, examples=("CohereForAI-c4ai-command-r-plus-tool_use.jinja",)),
]
