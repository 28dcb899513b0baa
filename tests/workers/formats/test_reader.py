"""The streaming reader's own promises, beyond llama.cpp's cases: text is not held
back longer than a marker's prefix, a call that does not parse comes back as
text, reasoning is split or kept, and JSON that models write is accepted."""

from __future__ import annotations

import pytest

from turnout.workers import formats
from turnout.workers.formats.events import Call, Text, Thinking

TOOLS = formats.ToolSet([
    {"name": "Bash", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}},
    {"name": "Read", "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}}}},
])


def hermes(**kw: object) -> formats.reader.Reader:
    return formats.by_name("hermes").new_reader(TOOLS, **kw)  # type: ignore[no-any-return]


def generic(**kw: object) -> formats.reader.Reader:
    return formats.by_name("generic").new_reader(TOOLS, **kw)  # type: ignore[no-any-return]


def run(reader: formats.reader.Reader, text: str, step: int) -> list[tuple[str, str]]:
    events = []
    for i in range(0, len(text), step):
        events += reader.feed(text[i : i + step])
    events += reader.finish()
    out: list[tuple[str, str]] = []
    for e in events:
        kind = "text" if isinstance(e, Text) else "think" if isinstance(e, Thinking) else "call"
        value = f"{e.name} {e.arguments}" if isinstance(e, Call) else e.text
        if out and out[-1][0] == kind and kind != "call":
            out[-1] = (kind, out[-1][1] + value)
        else:
            out.append((kind, value))
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_hermes_calls_between_text(step: int) -> None:
    text = ('Let me run it.\n<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call>\n'
            '<tool_call>{"function": {"name": "Read", "arguments": "{\\"file_path\\": \\"/a b\\"}"}}</tool_call>')
    assert run(hermes(), text, step) == [("text", "Let me run it.\n"), ("call", 'Bash {"command":"ls"}'),
                                         ("text", "\n"), ("call", 'Read {"file_path":"/a b"}')]


def test_text_streams_before_a_marker_completes() -> None:
    r = hermes()
    assert r.feed("Hello there <tool") == [Text("Hello there ")]  # only '<tool' held back
    assert r.feed("_ca") == []
    out = r.feed('ll>{"name":"Bash","arguments":{}}</tool_call>')
    assert [type(e) for e in out] == [Call]


def test_plain_text_is_not_held_back() -> None:
    r = hermes()
    assert r.feed("The answer") == [Text("The answer")]
    assert r.feed(" is 42.") == [Text(" is 42.")]


def test_bare_json_naming_an_unknown_tool_is_text() -> None:
    text = '{"name": "rm_rf", "arguments": {}} is JSON'
    assert run(generic(), text, 4) == [("text", text)]


def test_bare_json_opening_the_answer_is_a_call_fenced_or_not() -> None:
    assert run(generic(), '{"name": "Bash", "arguments": {"command": "a\tb"}}', 5) == [
        ("call", 'Bash {"command":"a\\tb"}')]  # a raw tab in a string: accepted and escaped
    assert run(generic(), '```json\n{"name": "Read", "arguments": {"file_path": "x"}}\n```', 3) == [
        ("call", 'Read {"file_path":"x"}')]


def test_malformed_call_is_returned_as_text() -> None:
    text = '<tool_call>{"name": "Bash", "arguments": {"command": </tool_call> ok'
    assert run(hermes(), text, 5) == [("text", text)]


def test_unterminated_call_at_end_of_output_still_parses() -> None:
    text = '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n'
    assert run(hermes(), text, 3) == [("call", 'Bash {"command":"ls"}')]


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_call_cut_off_keeps_only_its_finished_arguments(step: int) -> None:
    """Output that ends inside a call (max_tokens) still makes the call, as
    Anthropic returns a cut tool_use block: a cut string is dropped, never
    passed on shortened (``rm -rf /tmp/x`` cut to ``rm -rf /``)."""
    tools = formats.ToolSet([{"name": "Bash", "parameters": {"type": "object", "properties": {
        "command": {"type": "string"}, "timeout": {"type": "integer"}, "description": {"type": "string"}}}}])
    text = '<tool_call>{"name": "Bash", "arguments": {"command": "ls", "timeout": 5, "description": "Lists the fi'
    reader = formats.by_name("hermes").new_reader(tools)
    assert run(reader, text, step) == [("call", 'Bash {"command":"ls","timeout":5}')]
    text = '<tool_call>{"name": "Bash", "arguments": {"command": "rm -rf /tmp/x'
    assert run(formats.by_name("hermes").new_reader(tools), text, step) == [("call", "Bash {}")]


def test_call_cut_off_before_its_name_is_dropped() -> None:
    assert run(hermes(), 'Sure.<tool_call>{"name": "Ba', 3) == [("text", "Sure.")]


def test_no_tools_offered_leaves_markers_as_text() -> None:
    text = '<tool_call>{"name": "Bash", "arguments": {}}</tool_call>'
    assert run(hermes(tools_enabled=False), text, 4) == [("text", text)]


@pytest.mark.parametrize("step", [1, 4, 100])
def test_thinking_is_split(step: int) -> None:
    assert run(hermes(), "<think>hmm, 2+2</think>\nIt is 4.", step) == [("think", "hmm, 2+2"), ("text", "It is 4.")]


def test_thinking_opened_by_the_prompt() -> None:
    assert run(hermes(reasoning_open="<think>\n"), "plan</think>done", 2) == [("think", "plan"), ("text", "done")]


def test_raw_reasoning_keeps_the_markers_in_the_text() -> None:
    assert run(hermes(reasoning_open="<think>\n", raw_reasoning=True), "plan</think>done", 2) == [
        ("text", "<think>\nplan</think>done")]


def test_no_think_tag_is_all_answer() -> None:
    assert run(hermes(), "<b>bold</b>", 1) == [("text", "<b>bold</b>")]


def test_reading_is_linear_in_the_output() -> None:
    """A long call streamed a character at a time is scanned once, not re-parsed
    per character: 200 KB of arguments must read in well under a second even on
    a slow machine (quadratic scanning takes minutes)."""
    import time

    body = "x" * 200_000
    text = '<tool_call>{"name": "Bash", "arguments": {"command": "' + body + '"}}</tool_call>'
    r = hermes()
    t0 = time.process_time()
    events = []
    for ch in text:
        events += r.feed(ch)
    events += r.finish()
    assert time.process_time() - t0 < 5
    assert [type(e) for e in events] == [Call]
