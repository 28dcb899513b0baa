"""The call being written (``partial_calls``): what each family's reader tells
of a call before it is complete, the same however the output is split."""

from __future__ import annotations

import json

import pytest

from turnout.workers import formats
from turnout.workers.formats.events import Call
from turnout.workers.formats.jsonpartial import ArgsPrefix

SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}, "n": {"type": "integer"},
                                           "tags": {"type": "array"}}}
TOOLS = formats.ToolSet([{"name": "Edit", "parameters": SCHEMA}])
ARGS = {"path": "a \"b\".txt", "n": 12, "tags": ["x", "y"]}


def families() -> list[formats.Family]:
    return [f for f in formats.registry().values() if f.forced_call is not None]


def read_partial(fam: formats.Family, chunks: list[str]) -> list[Call]:
    reader = fam.new_reader(TOOLS)
    for c in chunks:
        reader.feed(c)
    return list(reader.partial_calls())


@pytest.mark.parametrize("fam", families(), ids=lambda f: f.name)
def test_whole_and_one_character_at_a_time_agree(fam: formats.Family) -> None:
    assert fam.forced_call is not None
    output = fam.forced_call("Edit", json.dumps(ARGS))
    reader = fam.new_reader(TOOLS)
    for i, ch in enumerate(output):
        reader.feed(ch)
        if i % 3 == 0:
            assert reader.partial_calls() == read_partial(fam, [output[: i + 1]]), output[: i + 1]


@pytest.mark.parametrize("fam", [f for f in families() if f.name in {
    "hermes", "qwen3-coder", "kimi-k2", "lfm2", "gpt-oss", "command-r7b", "mistral-small-3.2", "devstral"}],
    ids=lambda f: f.name)
def test_the_call_being_written_is_named_before_its_arguments_end(fam: formats.Family) -> None:
    assert fam.forced_call is not None
    output = fam.forced_call("Edit", json.dumps(ARGS))
    cut = output.index("12") + 2  # the second argument written, not yet ended
    calls = read_partial(fam, [output[:cut]])
    assert [c.name for c in calls] == ["Edit"]
    # the finished first argument, and the second begun (JSON text; converted formats name it)
    assert ArgsPrefix().feed(calls[0].arguments) == '{"path":"a \\"b\\".txt"', calls[0].arguments
    assert '"n":' in calls[0].arguments.replace(" ", "")


def test_no_partial_call_for_a_name_that_is_not_offered() -> None:
    reader = formats.by_name("hermes").new_reader(TOOLS)
    reader.feed('<tool_call>\n{"name": "Other", "arguments": {"a": ')
    assert reader.partial_calls() == []
    reader = formats.by_name("hermes").new_reader(TOOLS)
    reader.feed('<tool_call>\n{"name": "Edit", "arguments": {"a": ')
    assert [c.name for c in reader.partial_calls()] == ["Edit"]


def test_qwen3_coder_parameters_count_once_closed() -> None:
    reader = formats.by_name("qwen3-coder").new_reader(TOOLS)
    reader.feed("<tool_call>\n<function=Edit>\n<parameter=n>\n12\n</parameter>\n<parameter=path>\nab")
    assert reader.partial_calls() == [Call("Edit", '{"n":12,"path":')]
    reader.feed("c\n</parameter>\n")
    assert reader.partial_calls() == [Call("Edit", '{"n":12,"path":"abc"')]
