"""Streaming tool-call parsing, thinking split, and the forcing grammar."""

from __future__ import annotations

import json

import pytest

from protocol.chat import Tool
from workers import tool_calls as tc

BASH = Tool(
    name="Bash",
    description="Run a shell command",
    input_schema={
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command"},
            "timeout": {"type": "number"},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
)
READ = Tool(
    name="Read",
    input_schema={"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]},
)


def run(parser: tc.ToolCallParser, text: str, step: int) -> list[tc.Text | tc.Call]:
    """Feed ``text`` in chunks of ``step`` characters; merge adjacent text events."""
    events: list[tc.Text | tc.Call] = []
    for i in range(0, len(text), step):
        events += parser.feed(text[i : i + step])
    events += parser.finish()
    merged: list[tc.Text | tc.Call] = []
    for ev in events:
        if isinstance(ev, tc.Text) and merged and isinstance(merged[-1], tc.Text):
            merged[-1] = tc.Text(merged[-1].text + ev.text)
        else:
            merged.append(ev)
    return merged


def shape(events: list[tc.Text | tc.Call]) -> list[tuple[str, str]]:
    return [("text", e.text) if isinstance(e, tc.Text) else ("call", f"{e.name} {e.arguments}") for e in events]


OUTPUTS = {
    "hermes": (
        'Let me run it.\n<tool_call>\n{"name": "Bash", "arguments": {"command": "echo hi"}}\n</tool_call>',
        [("text", "Let me run it.\n"), ("call", 'Bash {"command":"echo hi"}')],
    ),
    "hermes_two": (
        '<tool_call>{"name": "Bash", "arguments": {"command": "ls"}}</tool_call>\n'
        '<tool_call>{"name": "Read", "arguments": {"file_path": "/a b"}}</tool_call>',
        [("call", 'Bash {"command":"ls"}'), ("text", "\n"), ("call", 'Read {"file_path":"/a b"}')],
    ),
    "llama3": (
        '{"name": "Bash", "parameters": {"command": "echo \\"}{\\""}}',
        [("call", 'Bash {"command":"echo \\"}{\\""}')],
    ),
    "llama3_python_tag": (
        '<|python_tag|>{"name": "Read", "parameters": {"file_path": "x"}}',
        [("call", 'Read {"file_path":"x"}')],
    ),
    "mistral": (
        '[TOOL_CALLS][{"name": "Bash", "arguments": {"command": "pwd"}}, {"name": "Read", "arguments": {"file_path": "f"}}]',
        [("call", 'Bash {"command":"pwd"}'), ("call", 'Read {"file_path":"f"}')],
    ),
    "mistral_v11": (
        '[TOOL_CALLS]Bash[ARGS]{"command": "pwd"}',
        [("call", 'Bash {"command":"pwd"}')],
    ),
    "plain_json_fenced": (
        '```json\n{"name": "Bash", "arguments": {"command": "date"}}\n```',
        [("call", 'Bash {"command":"date"}')],
    ),
    "openai_shape_string_args": (
        '<tool_call>{"function": {"name": "Bash", "arguments": "{\\"command\\": \\"id\\"}"}}</tool_call>',
        [("call", 'Bash {"command":"id"}')],
    ),
}


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_parses_every_format_at_any_chunk_boundary(case: str, step: int) -> None:
    text, expected = OUTPUTS[case]
    assert shape(run(tc.ToolCallParser(["Bash", "Read"]), text, step)) == expected


def test_text_streams_before_a_marker_completes() -> None:
    p = tc.ToolCallParser(["Bash"])
    assert p.feed("Hello there <tool") == [tc.Text("Hello there ")]  # only '<tool' held back
    assert p.feed("_ca") == []
    out = p.feed('ll>{"name":"Bash","arguments":{}}</tool_call>')
    assert [type(e) for e in out] == [tc.Call]


def test_plain_text_is_not_held_back() -> None:
    p = tc.ToolCallParser(["Bash"])
    assert p.feed("The answer") == [tc.Text("The answer")]
    assert p.feed(" is 42.") == [tc.Text(" is 42.")]


def test_bare_json_naming_an_unknown_tool_is_text() -> None:
    text = '{"name": "rm_rf", "arguments": {}} is JSON'
    assert shape(run(tc.ToolCallParser(["Bash"]), text, 4)) == [("text", text)]


def test_malformed_call_is_returned_as_text() -> None:
    text = '<tool_call>{"name": "Bash", "arguments": {"command": </tool_call> ok'
    assert shape(run(tc.ToolCallParser(["Bash"]), text, 5)) == [("text", text)]


def test_unterminated_call_at_end_of_output_still_parses() -> None:
    text = '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n'
    assert shape(run(tc.ToolCallParser(["Bash"]), text, 3)) == [("call", 'Bash {"command":"ls"}')]


def test_disabled_parser_passes_markers_through() -> None:
    text = '<tool_call>{"name": "Bash", "arguments": {}}</tool_call>'
    assert shape(run(tc.ToolCallParser(["Bash"], enabled=False), text, 4)) == [("text", text)]


def test_call_ids_are_unique_anthropic_style() -> None:
    text = '<tool_call>{"name":"Bash","arguments":{}}</tool_call><tool_call>{"name":"Bash","arguments":{}}</tool_call>'
    calls = [e for e in run(tc.ToolCallParser(["Bash"]), text, 9) if isinstance(e, tc.Call)]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("toolu_") for c in calls)


# ---------------------------------------------------------------- thinking


def split(s: tc.ThinkSplitter, text: str, step: int) -> tuple[str, str]:
    think = answer = ""
    for ev in [e for i in range(0, len(text), step) for e in s.feed(text[i : i + step])] + s.finish():
        if isinstance(ev, tc.Thinking):
            think += ev.text
        else:
            answer += ev.text
    return think, answer


@pytest.mark.parametrize("step", [1, 4, 100])
def test_thinking_is_split_when_enabled(step: int) -> None:
    assert split(tc.ThinkSplitter(True), "<think>hmm, 2+2</think>\nIt is 4.", step) == ("hmm, 2+2", "It is 4.")


def test_thinking_is_dropped_when_not_requested() -> None:
    assert split(tc.ThinkSplitter(False), "<think>secret</think>Answer", 3) == ("", "Answer")


def test_thinking_opened_by_the_prompt() -> None:
    assert split(tc.ThinkSplitter(True, open_at_start=True), "plan</think>done", 2) == ("plan", "done")


def test_no_think_tag_is_all_answer() -> None:
    assert split(tc.ThinkSplitter(True), "<b>bold</b>", 1) == ("", "<b>bold</b>")


# ---------------------------------------------------------------- grammar


def test_call_schema_for_one_tool_pins_the_name_and_drops_meta_keywords() -> None:
    schema = tc.call_schema([BASH, READ], "Bash")
    assert schema["properties"]["name"] == {"const": "Bash"}
    assert "$schema" not in schema["properties"]["arguments"]
    assert schema["properties"]["arguments"]["required"] == ["command"]


def test_call_schema_for_any_is_a_union() -> None:
    schema = tc.call_schema([BASH, READ])
    assert [v["properties"]["name"]["const"] for v in schema["anyOf"]] == ["Bash", "Read"]


def test_unknown_forced_tool_is_an_error() -> None:
    with pytest.raises(ValueError, match="not among the tools"):
        tc.call_schema([BASH], "Write")


def test_grammar_builds_for_every_claude_code_tool() -> None:
    from conftest import fixture_body

    from protocol.chat import Tool as T

    body = fixture_body("01-print-hello-request-2.json")
    tools = [T(t["name"], t.get("description", ""), t["input_schema"]) for t in body["tools"]]
    assert len(tools) == 24
    for t in tools:
        assert tc.tool_grammar(tools, t.name) is not None
    assert tc.tool_grammar(tools) is not None
    json.dumps(tc.call_schema(tools))


def test_schema_cleaning_keeps_a_property_named_description() -> None:
    schema = {"type": "object", "description": "x", "properties": {"description": {"type": "string", "title": "t"}}}
    assert tc._clean_schema(schema) == {"type": "object", "properties": {"description": {"type": "string"}}}


def test_raw_control_characters_in_strings_are_accepted_and_escaped() -> None:
    (call,) = run(tc.ToolCallParser(["Bash"]), '{"name": "Bash", "arguments": {"command": "a\tb"}}', 5)
    assert isinstance(call, tc.Call) and call.arguments == '{"command":"a\\tb"}'


def test_force_tool_drives_exactly_one_round_trip() -> None:
    from protocol.chat import ChatRequest, Message, TextPart, Tool, ToolResultPart, ToolUsePart
    from workers.tool_calls import effective_choice

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
