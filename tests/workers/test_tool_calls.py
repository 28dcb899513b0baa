"""The answer writer (decoded text -> wire messages) and the force_tool knob.

How each family's output is read is tested in tests/workers/formats/; here: stop
strings, calls as ToolCallStart + ToolArgsDelta with turnout's ids, one call when
one was asked for, thinking kept or dropped as the client asked."""

from __future__ import annotations

import json

from protocol import messages as m
from protocol.chat import (
    ChatRequest,
    Message,
    TextPart,
    ThinkingConfig,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from workers import chat_templates as ct
from workers import tool_calls as tc
from workers.tool_calls import effective_choice

BASH = Tool("Bash", "run", {"type": "object", "properties": {"command": {"type": "string"}}})


def request(**kw: object) -> ChatRequest:
    return ChatRequest(model="m", max_tokens=50, messages=[Message("user", [TextPart("go")])], tools=[BASH],
                       **kw)  # type: ignore[arg-type]


def write(req: ChatRequest, pieces: list[str], *, template: str = "", forced: bool = False,
          stops: list[str] | None = None) -> tuple[list[m.StreamMsg], tc.AnswerWriter]:
    info = ct.detect(template, "qwen2", chat_format="gguf" if template else "chatml")
    w = tc.AnswerWriter("r", req, ct.render(req, info), stops=stops, forced=forced)
    out: list[m.StreamMsg] = []
    for p in pieces:
        out += w.feed(p)
        if w.stop_reason is not None:
            break
    out += w.finish()
    return out, w


def calls(out: list[m.StreamMsg]) -> list[tuple[str, str, dict]]:
    starts = {x.index: x for x in out if isinstance(x, m.ToolCallStart)}
    args: dict[int, str] = {}
    for x in out:
        if isinstance(x, m.ToolArgsDelta):
            args[x.index] = args.get(x.index, "") + x.partial_json
    return [(s.id, s.name, json.loads(args[i])) for i, s in sorted(starts.items())]


def text(out: list[m.StreamMsg]) -> str:
    return "".join(x.text for x in out if isinstance(x, m.TextDelta))


def test_calls_get_unique_anthropic_style_ids_and_end_the_turn_as_tool_use() -> None:
    body = '<tool_call>{"name":"Bash","arguments":{"command":"ls"}}</tool_call>'
    out, w = write(request(), [body, body])
    got = calls(out)
    assert [(n, a) for _, n, a in got] == [("Bash", {"command": "ls"})] * 2
    assert len({i for i, _, _ in got}) == 2 and all(i.startswith("toolu_") for i, _, _ in got)
    assert w.done("end_turn", m.Usage()).stop_reason == "tool_use"


def test_long_arguments_stream_in_chunks() -> None:
    body = '<tool_call>{"name":"Bash","arguments":{"command":"' + "x" * 500 + '"}}</tool_call>'
    out, _ = write(request(), [body])
    deltas = [x for x in out if isinstance(x, m.ToolArgsDelta)]
    assert len(deltas) > 1 and all(len(d.partial_json) <= tc.ARGS_CHUNK for d in deltas)


def test_one_call_when_parallel_calls_are_off() -> None:
    body = '<tool_call>{"name":"Bash","arguments":{"command":"ls"}}</tool_call>'
    out, w = write(request(tool_choice=ToolChoice("auto", disable_parallel=True)), [body, "after", body])
    assert len(calls(out)) == 1 and text(out) == "" and w.stop_reason == "end_turn"


def test_end_of_turn_string_and_client_stop_sequence() -> None:
    out, w = write(request(), ["Short answer.<|im_end|>more"])
    assert text(out) == "Short answer." and w.stop_reason == "end_turn"
    out, w = write(request(stop=["STOP"]), ["abc ST", "OP def"])
    assert text(out) == "abc " and w.stop_reason == "stop_sequence" and w.stop_sequence == "STOP"
    assert w.done("stop_sequence", m.Usage()).stop_sequence == "STOP"


def test_the_models_stop_option_ends_the_turn() -> None:
    out, w = write(request(), ["one\n\ntwo"], stops=["\n\n"])
    assert text(out) == "one" and w.stop_reason == "end_turn"


def test_forced_call_is_not_cut_by_end_of_turn_strings() -> None:
    info = ct.detect("", "qwen2", chat_format="chatml")
    req = request(tool_choice=ToolChoice("tool", "Bash"))
    w = tc.AnswerWriter("r", req, ct.render(req, info), stops=["\n"], forced=True, turn_stops=False)
    out = w.feed('<tool_call>\n{"name": "Bash",\n"arguments": {"command": "a\\nb"}}\n</tool_call>') + w.finish()
    assert [(n, a) for _, n, a in calls(out)] == [("Bash", {"command": "a\nb"})]


def test_thinking_is_kept_when_asked_for_and_dropped_otherwise() -> None:
    pieces = ["<think>plan</think>", "answer"]
    out, _ = write(request(thinking=ThinkingConfig("enabled", 1000)), pieces)
    assert "".join(x.text for x in out if isinstance(x, m.ThinkingDelta)) == "plan" and text(out) == "answer"
    out, _ = write(request(), pieces)
    assert not [x for x in out if isinstance(x, m.ThinkingDelta)] and text(out) == "answer"


def test_force_tool_drives_exactly_one_round_trip() -> None:
    tools = [Tool("Bash", "run", {"type": "object"})]
    opening = ChatRequest(model="m", max_tokens=5, tools=tools, messages=[Message("user", [TextPart("do it")])])
    forced = effective_choice(opening, "Bash")
    assert forced is not None and forced.type == "tool" and forced.name == "Bash"
    after = ChatRequest(model="m", max_tokens=5, tools=tools, messages=[
        Message("user", [TextPart("do it")]), Message("assistant", [ToolUsePart("t1", "Bash", {"command": "ls"})]),
        Message("user", [ToolResultPart("t1", [TextPart("out")])])])
    follow = effective_choice(after, "Bash")
    assert follow is not None and follow.type == "none"  # a text answer, no second call
    assert effective_choice(opening, "") is None  # the knob off: the request decides
