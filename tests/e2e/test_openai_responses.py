"""The official ``openai`` SDK's Responses API (``client.responses``) against a real
turnout with the fake backend: text, streaming with the SDK's event accumulator,
function calls and their outputs in the next turn, structured output through a
llama.cpp worker elsewhere (test_structured_output), and clear 400s for what turnout
does not keep or host."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from turnout.supervisor.launch import TurnoutProcess

TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "description": "weather for a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def client(t: TurnoutProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=t.base_url + "/v1", api_key=t.token, max_retries=0)


def test_text_answer_and_usage(turnout: TurnoutProcess) -> None:
    r = client(turnout).responses.create(model="fake", input="up down", instructions="be brief", max_output_tokens=4)
    assert r.output_text == "up down up down"
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 4 and r.usage.input_tokens > 0
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "fake"
    whole = client(turnout).responses.create(model="fake", input=[{"role": "user", "content": "a b c"}])
    assert whole.status == "completed" and whole.output_text.startswith("a b c")


def test_streaming_events_accumulate_in_the_sdk(turnout: TurnoutProcess) -> None:
    with client(turnout).responses.stream(model="fake", input="left right", max_output_tokens=5) as s:
        events = list(s)
    kinds = [ev.type for ev in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") == 5
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    # Out of tokens, as OpenAI ends it: response.incomplete (the SDK has no "final" then)
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "incomplete" and final.output_text == "left right left right left"
    assert [ev.sequence_number for ev in events] == list(range(len(events)))
    with client(turnout).responses.stream(model="fake", input="a b", max_output_tokens=50) as s:
        assert s.get_final_response().output_text.startswith("a b")


def test_function_call_round_trip(turnout: TurnoutProcess) -> None:
    c = client(turnout)
    prompt = 'weather? [[tool:get_weather {"city": "Paris"}]]'
    with c.responses.stream(model="fake", input=prompt, tools=TOOLS) as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    call = next(o for o in final.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    again = c.responses.create(model="fake", tools=TOOLS, input=[
        {"role": "user", "content": prompt},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny and mild"}])
    assert again.output_text.startswith("sunny and mild")  # the fake repeats the last user text: the tool output


def test_hosted_tools_are_left_out_and_namespaces_opened(turnout: TurnoutProcess) -> None:
    """What Codex CLI sends: function tools, a namespace of more, and web_search."""
    tools: list[Any] = [{"type": "web_search", "external_web_access": False},
                        {"type": "namespace", "name": "ns", "description": "grouped", "tools": TOOLS}]
    r = client(turnout).responses.create(model="fake", tools=tools,
                                         input='weather? [[tool:get_weather {"city": "Oslo"}]]')
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}


@pytest.mark.parametrize(("kw", "param"), [
    ({"previous_response_id": "resp_123", "input": "x"}, "previous_response_id"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    # wrong types that once reached the worker, which dropped the message it could
    # not read: the request hung until its cancel was overdue and the worker restarted
    ({"input": "x", "temperature": {"a": {}}}, "temperature"),
    ({"input": "x", "top_p": "high"}, "top_p"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": [1]}]}, "tools.0.parameters"),
])
def test_what_is_not_served_is_a_400_naming_the_field(turnout: TurnoutProcess, kw: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client(turnout).responses.create(model="fake", **kw)
    assert ei.value.body["param"] == param, ei.value.body  # type: ignore[index]
