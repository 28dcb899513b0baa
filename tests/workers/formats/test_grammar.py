"""A forced call's grammar, in each family's own format: it builds for every tool
Claude Code sends, and real llama.cpp sampling held to it (random weights, so
every token is the grammar's doing) writes a call the family's reader reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import StubCtx, fixture_body

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Message, TextPart, Tool, ToolChoice
from turnout.workers import formats
from turnout.workers.base import WorkerSpec
from turnout.workers.formats.grammar import call_grammar, clean_schema, forced_prefix
from turnout.workers.llama_cpp import create

FAMILIES = [f for f in formats.registry().values() if f.forced_call is not None]
BASH = Tool("Bash", "run", {"type": "object", "properties": {
    "command": {"type": "string", "maxLength": 40}, "timeout": {"type": "integer"},
    "mode": {"enum": ["fast", "safe"]}}, "required": ["command", "timeout"]})
GREET = Tool("Greet", "say hi", {"type": "object", "properties": {"who": {"type": "string", "maxLength": 30}},
                                 "required": ["who"]})


def claude_code_tools() -> list[Tool]:
    body = fixture_body("01-print-hello-request-2.json")
    return [Tool(t["name"], t.get("description", ""), t["input_schema"]) for t in body["tools"]]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_grammar_builds_for_every_claude_code_tool(family: formats.Family) -> None:
    from llama_cpp import LlamaGrammar

    tools = claude_code_tools()
    assert len(tools) == 24
    for t in tools:
        LlamaGrammar.from_string(call_grammar(family, tools, t.name), verbose=False)
    LlamaGrammar.from_string(call_grammar(family, tools), verbose=False)


def test_unknown_forced_tool_is_an_error() -> None:
    with pytest.raises(ValueError, match="not among the tools"):
        call_grammar(formats.by_name("generic"), [BASH], "Write")


def test_schema_cleaning_keeps_a_property_named_description() -> None:
    schema = {"type": "object", "description": "x", "properties": {"description": {"type": "string", "title": "t"}}}
    assert clean_schema(schema) == {"type": "object", "properties": {"description": {"type": "string"}}}


def test_forced_prefix_is_the_start_of_the_call() -> None:
    fam = formats.by_name("hermes")
    assert forced_prefix(fam, [BASH], "Bash") == '<tool_call>\n{"name": "Bash", "arguments": '


def run(tiny_gguf: Path, family: str, tools: list[Tool], choice: ToolChoice, seed: int) -> list[Any]:
    spec = WorkerSpec(id="w", backend="llama_cpp", model="tiny", runtime_dir="/tmp", gateway_ids=[],
                      path=str(tiny_gguf), options={"seed": seed, "tool_format": family})
    b = create(spec)
    b.load()
    req = ChatRequest(model="tiny", max_tokens=700, temperature=1.0, tools=tools, tool_choice=choice,
                      messages=[Message("user", [TextPart("go")])])
    return list(b.generate("r", req, StubCtx()))


def calls_of(out: list[Any]) -> list[tuple[str, dict]]:
    names = {x.index: x.name for x in out if isinstance(x, m.ToolCallStart)}
    args: dict[int, str] = {}
    for x in out:
        if isinstance(x, m.ToolArgsDelta):
            args[x.index] = args.get(x.index, "") + x.partial_json
    return [(names[i], json.loads(args[i])) for i in sorted(names)]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_weights_held_to_the_grammar_write_a_call_the_family_reads(
        tiny_gguf: Path, family: formats.Family, seed: int) -> None:
    out = run(tiny_gguf, family.name, [BASH, GREET], ToolChoice("tool", "Bash"), seed)
    (name, args), = calls_of(out)
    assert name == "Bash" and isinstance(args.get("command"), str) and isinstance(args.get("timeout"), int), [str(x) for x in out[-12:]]
    assert set(args) <= {"command", "timeout", "mode"} and args.get("mode", "fast") in ("fast", "safe")
    assert out[-1].stop_reason == "tool_use"
    assert not "".join(x.text for x in out if isinstance(x, m.TextDelta)).strip()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_tool_choice_any_calls_one_of_the_tools(tiny_gguf: Path, family: formats.Family) -> None:
    out = run(tiny_gguf, family.name, [BASH, GREET], ToolChoice("any"), 3)
    (name, _), = calls_of(out)
    assert name in ("Bash", "Greet") and out[-1].stop_reason == "tool_use"


TODO = Tool("TodoWrite", "todos", {"type": "object", "properties": {"todos": {"type": "array", "maxItems": 2, "items": {
    "type": "object", "properties": {"content": {"type": "string", "maxLength": 12},
                                     "status": {"enum": ["pending", "done"]}},
    "required": ["content", "status"], "additionalProperties": False}}}, "required": ["todos"]})


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_nested_arguments_are_held_to_the_schema_and_read_back(tiny_gguf: Path, family: formats.Family) -> None:
    out = run(tiny_gguf, family.name, [TODO], ToolChoice("tool", "TodoWrite"), 4)
    (name, args), = calls_of(out)
    assert name == "TodoWrite" and isinstance(args["todos"], list) and len(args["todos"]) <= 2
    for item in args["todos"]:
        assert set(item) == {"content", "status"} and item["status"] in ("pending", "done")
