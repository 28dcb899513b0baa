"""What the families read beyond llama.cpp's own cases: calls written the other ways
these models write them, and prose that only looks like a call staying prose.
Each output is read whole and one character at a time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from turnout.workers import formats
from turnout.workers.formats.events import Call, Text, Thinking

TOOLS = formats.ToolSet([
    {"name": "get", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}},
    {"name": "python", "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}},
])

# family, output, options, (content, reasoning, [(name, args, id)])
CASES: list[tuple[str, str, dict[str, Any], tuple[str, str, list[tuple[str, Any, str]]]]] = [
    # calls written another way
    ("deepseek-r1", '<think>hmm</think>ok<｜tool▁call▁begin｜>function<｜tool▁sep｜>get\n```json\n{"x": 1}\n```'  # noqa: RUF001
     "<｜tool▁call▁end｜>", {}, ("ok", "hmm", [("get", {"x": 1}, "")])),  # noqa: RUF001
    ("kimi-k2", "<think>a<|tool_calls_section_begin|><|tool_call_begin|>functions.get:0<|tool_call_argument_begin|>"
     '{"x":1}<|tool_call_end|><|tool_calls_section_end|>after', {}, ("after", "a", [("get", {"x": 1}, "functions.get:0")])),
    ("llama3", '<|python_tag|>brave_search.call(query="weather paris")<|eom_id|>', {},
     ("", "", [("brave_search", {"query": "weather paris"}, "")])),
    ("llama3", '{"type": "function", "name": "get", "parameters": {"x": 2}}', {}, ("", "", [("get", {"x": 2}, "")])),
    ("functionary-v3.1", '<|python_tag|>print("hi")', {}, ("", "", [("python", {"code": 'print("hi")'}, "")])),
    ("functionary-v3.2", 'all\nLet me check.>>>get\n{"x": 1}\n>>>python\nprint(1)\n>>>all\nDone', {},
     ("Let me check.Done", "", [("get", {"x": 1}, ""), ("python", {"code": "print(1)"}, "")])),
    ("functionary-v3.2", "world!", {"reasoning_open": ">>>all\nHello, "}, ("world!", "", [])),
    ("gigachat-3", 'Hello<|message_sep|>\n\nfunction call<|role_sep|>\n{"name": "get", "arguments": {"x": 1}}', {},
     ("Hello", "", [("get", {"x": 1}, "")])),
    ("nemotron-nano-v2", '<TOOLCALL>[{"name": "get", "arguments": {"x": 1}}, {"name": "get", "arguments": {"x": 2}}]'
     "</TOOLCALL>", {}, ("", "", [("get", {"x": 1}, ""), ("get", {"x": 2}, "")])),
    ("kimi-k3", '<|open|>tools<|sep|><|open|>call tool="get" index="1"<|sep|><|open|>json type="object"<|sep|>'
     '{"x": 3}<|close|>json<|sep|><|close|>call<|sep|><|close|>tools<|sep|>', {}, ("", "", [("get", {"x": 3}, "")])),
    # answers that end as the template ends them
    ("gigachat-3", "Hello<|message_sep|>\n\n", {}, ("Hello", "", [])),
    ("command-a", "thinking<|START_TEXT|>answer<|END_TEXT|>", {"reasoning_open": "<|START_THINKING|>"},
     ("answer", "thinking", [])),
    ("kimi-k3", "hmm<|close|>think<|sep|><|open|>response<|sep|>ok<|close|>response<|sep|><|close|>message<|sep|>",
     {"reasoning_open": "<|open|>think<|sep|>", "raw_reasoning": True}, ("hmmok", "", [])),
    # prose that only looks like a call
    ("mistral-small-3.2", "text [TOOL_CALLS] is a marker I mention", {}, ("text [TOOL_CALLS] is a marker I mention", "", [])),
    ("command-r-plus", "Action: I will answer directly.", {}, ("Action: I will answer directly.", "", [])),
    ("firefunction-v2", "I use functools.partial here, and functools[x] too.", {},
     ("I use functools.partial here, and functools[x] too.", "", [])),
    ("llama3", '{"name": "nope", "parameters": {}}', {}, ('{"name": "nope", "parameters": {}}', "", [])),
    ("llama3", 'Use {"name": "get"} like that', {}, ('Use {"name": "get"} like that', "", [])),
    ("functionary-v3.2", "Hello there\nsecond line", {}, ("Hello there\nsecond line", "", [])),
    # a fence is kept unless the request asked for JSON
    ("ministral-3", '```json\n{"a": 1}\n```', {}, ('```json\n{"a": 1}\n```', "", [])),
    ("ministral-3", '```json\n{"a": 1}\n```', {"json_response": True}, ('{"a": 1}', "", [])),
    ("granite-3.3", '<response>```json\n{"a": 1}\n```</response>', {"json_response": True}, ('{"a": 1}', "", [])),
    ("command-a", 'x<|END_THINKING|><|START_TEXT|>```json\n{"a": 1}\n```<|END_TEXT|>',
     {"reasoning_open": "<|START_THINKING|>", "json_response": True}, ('{"a": 1}', "x", [])),
]


def read(family: str, chunks: list[str], opts: dict[str, Any]) -> tuple[str, str, list[tuple[str, Any, str]]]:
    reader = formats.by_name(family).new_reader(TOOLS, **opts)
    events = []
    for chunk in chunks:
        events += reader.feed(chunk)
    events += reader.finish()
    return ("".join(e.text for e in events if isinstance(e, Text)).strip(),
            "".join(e.text for e in events if isinstance(e, Thinking)).strip(),
            [(e.name, json.loads(e.arguments), e.id) for e in events if isinstance(e, Call)])


@pytest.mark.parametrize("family,output,opts,want", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chars"])
def test_reads(family: str, output: str, opts: dict[str, Any], want: Any, chunked: bool) -> None:
    assert read(family, list(output) if chunked else [output], opts) == want
