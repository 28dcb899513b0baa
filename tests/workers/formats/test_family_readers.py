"""Family readers on outputs llama.cpp's cases do not cover: harmony's built-in
tools and broken calls, MiniMax M3's nested arguments, LFM's Python literals,
Gemma 4's quoted keys, MiniCPM5's CDATA, a marker that is the start of a longer
one. Each is read whole and one character at a time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from turnout.workers import formats
from turnout.workers.formats.events import Call, Text, Thinking

TOOLS = formats.ToolSet([
    {"name": "get_time", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "plan", "parameters": {"type": "object", "properties": {
        "steps": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "title": {"type": "string"}}}},
        "limit": {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"max": {"type": "integer"}}}]},
        "note": {"type": ["string", "null"]}}}},
])


def read(family: str, text: str, chunked: bool, **options: Any) -> tuple[str, str, list[tuple[str, Any]]]:
    reader = formats.by_name(family).new_reader(TOOLS, **options)
    events = []
    for chunk in (list(text) if chunked else [text]):
        events += reader.feed(chunk)
    events += reader.finish()
    return ("".join(e.text for e in events if isinstance(e, Text)),
            "".join(e.text for e in events if isinstance(e, Thinking)),
            [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, Call)])


chunking = pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chars"])


@chunking
def test_harmony_drops_builtin_tool_messages_and_keeps_the_function_call(chunked: bool) -> None:
    text = ("<|channel|>analysis<|message|>Run it.<|end|>"
            "<|start|>assistant<|channel|>commentary to=python <|constrain|>code<|message|>print(1)<|call|>"
            "<|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>"
            '{"city": "Oslo"}<|call|>')
    assert read("gpt-oss", text, chunked) == ("", "Run it.", [("get_time", {"city": "Oslo"})])


@chunking
def test_harmony_call_whose_body_is_not_json_is_given_back_as_text(chunked: bool) -> None:
    text = "<|channel|>commentary to=functions.get_time<|message|>city is Oslo<|call|>"
    assert read("gpt-oss", text, chunked) == ("city is Oslo", "", [])


@chunking
def test_harmony_preamble_then_final_answer(chunked: bool) -> None:
    text = ("<|channel|>commentary<|message|>Checking.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Done.<|return|>")
    assert read("gpt-oss", text, chunked) == ("Checking.Done.", "", [])


@chunking
def test_harmony_without_tools_drops_calls(chunked: bool) -> None:
    text = ' to=functions.get_time<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>'
    assert read("gpt-oss", text, chunked, tools_enabled=False) == ("", "", [])


@chunking
def test_muse_glimmer_reasoning_then_two_calls(chunked: bool) -> None:
    call = ('<atem:function_calls>\n<atem:invoke name="get_time">\n<atem:parameter name="city">{}'
            "</atem:parameter>\n</atem:invoke>\n</atem:function_calls>")
    text = (" to=self<|message|>Two cities.<|eom|>"
            f"<|start|>assistant to=get_time<|message|>{call.format('Oslo')}<|eom|>"
            f"<|start|>assistant to=get_time<|message|>{call.format('Rome')}<|eot|>")
    assert read("muse-glimmer", text, chunked) == (
        "", "Two cities.", [("get_time", {"city": "Oslo"}), ("get_time", {"city": "Rome"})])


@chunking
def test_minimax_m3_nested_arguments_typed_by_schema(chunked: bool) -> None:
    args = {"steps": [{"id": 1, "title": "a <b>"}, {"id": 2, "title": "7"}], "limit": {"max": 3}, "note": "null"}
    text = formats.by_name("minimax-m3").forced_call("plan", json.dumps(args))  # type: ignore[misc]
    # "note" may be a string, so its text stays the string "null"
    assert read("minimax-m3", text, chunked) == ("", "", [("plan", args)])


@chunking
def test_lfm_python_literals(chunked: bool) -> None:
    text = ("<|tool_call_start|>[plan(steps=[{'id': 1, 'title': 'it\\'s'}, ], limit=-2, note=None),"
            " get_time(city='K\\u00f8ge')]<|tool_call_end|>")
    assert read("lfm2", text, chunked) == ("", "", [
        ("plan", {"steps": [{"id": 1, "title": "it's"}], "limit": -2, "note": None}),
        ("get_time", {"city": "Køge"})])


@chunking
def test_lfm_text_that_is_not_a_call_stays_text(chunked: bool) -> None:
    text = "<|tool_call_start|>[get_time(city=Oslo)]<|tool_call_end|>"
    content, _, calls = read("lfm2", text, chunked)
    assert calls == [] and "get_time(city=Oslo)" in content


@chunking
def test_gemma4_quoted_keys_and_a_lone_channel_marker(chunked: bool) -> None:
    text = '<|channel>Hi.<|tool_call>call:plan{<|"|>limit<|"|>:5,note:<|"|>a, b}<|"|>}<tool_call|>'
    assert read("gemma4", text, chunked) == ("Hi.", "", [("plan", {"limit": 5, "note": "a, b}"})])


@chunking
def test_minicpm5_cdata_value_round_trips(chunked: bool) -> None:
    args = {"city": "\n<x></param>\n"}
    text = formats.by_name("minicpm5").forced_call("get_time", json.dumps(args))  # type: ignore[misc]
    assert "CDATA" in text
    assert read("minicpm5", text, chunked) == ("", "", [("get_time", args)])


@chunking
def test_minicpm5_cdata_cut_by_a_function_close_is_text_not_a_wrong_call(chunked: bool) -> None:
    # the call ends at the first </function>, even inside CDATA (a known limit)
    text = '<function name="get_time"><param name="city"><![CDATA[a</function>b]]></param></function>'
    content, _, calls = read("minicpm5", text, chunked)
    assert calls == [] and "CDATA" in content
