"""The answer writer (decoded text -> wire messages) and the force_tool knob.

How each family's output is read is tested in tests/workers/formats/; here: stop
strings, calls as ToolCallStart + ToolArgsDelta with turnout's ids, one call when
one was asked for, thinking kept or dropped as the client asked."""

from __future__ import annotations

import json

import pytest

from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    Message,
    TextPart,
    ThinkingConfig,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from turnout.workers import chat_templates as ct
from turnout.workers import formats
from turnout.workers import tool_calls as tc
from turnout.workers.formats.events import Call
from turnout.workers.formats.render import Rendered
from turnout.workers.tool_calls import effective_choice

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


# ---------------------------------------------------------------- calls streamed while written

WRITE_SCHEMA = {"type": "object", "properties": {
    "file_path": {"type": "string"}, "content": {"type": "string"}, "count": {"type": "integer"},
    "flags": {"type": "array"}, "opts": {"type": "object"}}}
WRITE_ARGS = {"file_path": "app/x.py", "count": 3, "flags": [True, None, "a,b"], "opts": {"depth": 1.5},
              "content": 'def f():\n    return "}]" + \'\\\\\' # <b> {x} é'}
# families whose calls stream while written (the others send a call whole at its end)
# (not llama3, generic, gemma: their call is a bare JSON answer, a call only once that JSON is whole
# unless a grammar forces it, so it is sent whole)
STREAMING = {"gpt-oss", "seed-oss", "command-a", "command-r7b", "functionary-v3.2", "kimi-k2", "lfm2",
             "ministral-3", "mistral-small-3.2", "devstral", "mistral-nemo", "qwen3-coder", "apriel-1.6",
             "gigachat-3.1", "granite-3.3", "nemotron-nano-v2", "apriel-1.5", "gigachat-3", "minimax-m1",
             "hermes", "deepseek-r1", "deepseek-v3.1", "firefunction-v2",
             "functionary-v3.1", "command-r-plus", "deepseek-v3.2", "deepseek-v4", "minimax-m2", "minicpm5", "glm",
             "laguna", "ling", "apertus", "gemma4", "kimi-k3"}


# an XML parameter cut off before its closing tag is read to the output's end (the
# reader's rule for tag formats); what was streamed is still a prefix
XML_CUT = {"qwen3-coder", "seed-oss", "deepseek-v3.2", "deepseek-v4", "minimax-m2", "minicpm5"}


def family_output(fam: formats.Family) -> str:
    assert fam.forced_call is not None
    call = fam.forced_call("Write", json.dumps(WRITE_ARGS))
    second = fam.forced_call("Bash", json.dumps({"command": "ls -la"}))
    return call + second


def family_writer(fam: formats.Family, **kw: object) -> tc.AnswerWriter:
    tools = [Tool("Write", "write", WRITE_SCHEMA), BASH]
    req = ChatRequest(model="m", max_tokens=50, messages=[Message("user", [TextPart("go")])], tools=tools)
    toolset = formats.ToolSet([{"name": t.name, "parameters": t.input_schema} for t in tools])
    rendered = Rendered(prompt="", stop=[], family=fam, tools_enabled=True, tools=toolset)
    return tc.AnswerWriter("r", req, rendered, **kw)  # type: ignore[arg-type]


def streamed(fam: formats.Family, output: str, **kw: object) -> tuple[list[list[m.StreamMsg]], list[m.StreamMsg]]:
    """``output`` fed one character at a time: the messages of each feed, and all."""
    w = family_writer(fam, **kw)
    steps = [w.feed(ch) for ch in output]
    steps.append(w.finish())
    return steps, [x for s in steps for x in s]


def final_calls(fam: formats.Family, output: str) -> list[Call]:
    tools = formats.ToolSet([{"name": "Write", "parameters": WRITE_SCHEMA},
                             {"name": "Bash", "parameters": BASH.input_schema}])
    reader = fam.new_reader(tools)
    events = reader.feed(output) + reader.finish()
    return [e for e in events if isinstance(e, Call)]


def arg_texts(out: list[m.StreamMsg]) -> list[str]:
    texts: dict[int, str] = {}
    for x in out:
        if isinstance(x, m.ToolCallStart):
            texts[x.index] = ""
        elif isinstance(x, m.ToolArgsDelta):
            texts[x.index] += x.partial_json
    return [texts[i] for i in sorted(texts)]


def forced_families() -> list[formats.Family]:
    return [f for f in formats.registry().values() if f.forced_call is not None]


@pytest.mark.parametrize("fam", forced_families(), ids=lambda f: f.name)
def test_streamed_arguments_concatenate_to_the_final_arguments(fam: formats.Family) -> None:
    output = family_output(fam)
    final = final_calls(fam, output)
    assert final  # (a second call written this way is not a call in every format)
    steps, out = streamed(fam, output)
    assert arg_texts(out) == [c.arguments for c in final]  # exactly: clients concatenate them
    # each call's deltas come after its start and before the next call's start
    seq = [(type(x).__name__, x.index) for x in out if isinstance(x, (m.ToolCallStart, m.ToolArgsDelta))]
    assert seq == sorted(seq, key=lambda t: (t[1], t[0] != "ToolCallStart"))
    # a call streams while it is written: its start, then arguments, before the output ends
    first_start = next(i for i, s in enumerate(steps) if any(isinstance(x, m.ToolCallStart) for x in s))
    first_args = next(i for i, s in enumerate(steps) if any(isinstance(x, m.ToolArgsDelta) for x in s))
    end_of_first = output.index(json.dumps(WRITE_ARGS["file_path"])[1:-1]) if fam.name in STREAMING else len(output)
    if fam.name in STREAMING:
        assert first_start < end_of_first  # announced once its name is known
        assert first_args < len(output) - len(fam.forced_call("Bash", "{}"))  # arguments before the call ends
    else:  # sent whole at its end
        assert all(x.index != 0 for i, st in enumerate(steps) if i != first_start for x in st
                   if isinstance(x, m.ToolArgsDelta))


@pytest.mark.parametrize("fam", forced_families(), ids=lambda f: f.name)
def test_a_cut_call_never_takes_back_what_was_streamed(fam: formats.Family) -> None:
    """Cut anywhere (max_tokens): what was streamed is a prefix of the call that is
    made (finished arguments only; a cut string is not passed on shortened)."""
    assert fam.forced_call is not None
    output = fam.forced_call("Write", json.dumps(WRITE_ARGS))
    for cut in range(0, len(output), 3):
        _, out = streamed(fam, output[:cut])
        starts = [x for x in out if isinstance(x, m.ToolCallStart)]
        for args in arg_texts(out):
            value = json.loads(args)  # each call made is whole JSON
            if fam.name in STREAMING and len(starts) == 1 and fam.name not in XML_CUT:
                for k, v in value.items():  # a cut string is dropped, never shortened
                    want = WRITE_ARGS[k]
                    assert v == (want[: len(v)] if isinstance(want, list) else want) or isinstance(want, dict)


def test_a_string_streams_once_it_is_closed() -> None:
    fam = formats.by_name("hermes")
    head = '<tool_call>\n{"name": "Write", "arguments": {"file_path": "a.py", "content": "hel'
    w = family_writer(fam)
    out = w.feed(head)
    assert [x.name for x in out if isinstance(x, m.ToolCallStart)] == ["Write"]
    assert "".join(x.partial_json for x in out if isinstance(x, m.ToolArgsDelta)) == '{"file_path":"a.py"'
    out = w.feed('lo"')
    assert "".join(x.partial_json for x in out if isinstance(x, m.ToolArgsDelta)) == ',"content":"hello"'
    out = w.feed(', "count": 12') + w.feed("3")
    assert not [x for x in out if isinstance(x, m.ToolArgsDelta)]  # a number once the "," or "}" after it is written
    out = w.feed("}}\n</tool_call>") + w.finish()
    assert "".join(x.partial_json for x in out if isinstance(x, m.ToolArgsDelta)) == ',"count":123}'


def test_an_announced_call_is_made_even_if_its_body_goes_wrong() -> None:
    """Once its start is sent a call is certain: a body that turns out not to parse
    makes the call with its finished arguments (never text, never a second start)."""
    fam = formats.by_name("hermes")
    _, out = streamed(fam, '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}} oops</tool_call>after')
    assert [(x.name) for x in out if isinstance(x, m.ToolCallStart)] == ["Bash"]
    assert arg_texts(out) == ['{"command":"ls"}'] and text(out) == "after"


def test_no_call_is_announced_before_it_is_one() -> None:
    """A JSON answer that names no offered tool is text (generic's bare JSON)."""
    fam = formats.by_name("generic")
    _, out = streamed(fam, '{"name": "Bob", "arguments": {"age": 3}}')
    assert not [x for x in out if isinstance(x, m.ToolCallStart)]
    assert json.loads(text(out)) == {"name": "Bob", "arguments": {"age": 3}}


def test_a_forced_call_streams_and_ends_the_answer() -> None:
    fam = formats.by_name("qwen3-coder")
    output = family_output(fam)
    w = family_writer(fam, forced=True)
    out: list[m.StreamMsg] = []
    for ch in output:
        out += w.feed(ch)
        if w.stop_reason is not None:
            break
    out += w.finish()
    assert w.stop_reason == "end_turn"
    assert [x.name for x in out if isinstance(x, m.ToolCallStart)] == ["Write"]
    assert arg_texts(out) == [final_calls(fam, output)[0].arguments]
