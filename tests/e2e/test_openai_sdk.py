"""The official ``openai`` SDK against a real turnout with the fake backend."""

from __future__ import annotations

import json

import openai
import pytest
import urllib3

from tests.conftest import SLOW_CONFIG
from turnout.supervisor.launch import TurnoutProcess

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def client(t: TurnoutProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=t.base_url + "/v1", api_key=t.token, max_retries=0)


def test_non_streaming(turnout: TurnoutProcess) -> None:
    r = client(turnout).chat.completions.create(
        model="fake", max_tokens=4, messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "up down"}])
    ch = r.choices[0]
    assert ch.message.content == "up down up down"
    assert ch.finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 4 and r.usage.prompt_tokens == 3
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")


def test_streaming_with_usage(turnout: TurnoutProcess) -> None:
    stream = client(turnout).chat.completions.create(
        model="fake", max_completion_tokens=5, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "left right"}])
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "left right left right left"
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 5


def test_tool_calls_streamed_and_not(turnout: TurnoutProcess) -> None:
    prompt = 'weather? [[tool:get_weather {"city": "Paris"}]]'
    c = client(turnout)
    r = c.chat.completions.create(model="fake", max_tokens=50, tools=TOOLS,  # type: ignore[arg-type]
                                  messages=[{"role": "user", "content": prompt}])
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    stream = c.chat.completions.create(model="fake", max_tokens=50, tools=TOOLS, stream=True,  # type: ignore[arg-type]
                                       messages=[{"role": "user", "content": prompt}])
    name, args, finish = "", "", None
    for chunk in stream:
        d = chunk.choices[0].delta
        for tc in d.tool_calls or []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    # The tool result goes back as a `tool` message.
    follow = c.chat.completions.create(model="fake", max_tokens=2, tools=TOOLS, messages=[  # type: ignore[arg-type]
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny warm"},
    ])
    assert follow.choices[0].message.content == "sunny warm"


def test_models_list_in_openai_shape(turnout: TurnoutProcess) -> None:
    ids = [m.id for m in client(turnout).models.list()]
    assert "fake" in ids
    r = urllib3.request("GET", turnout.base_url + "/v1/models", headers={"Authorization": f"Bearer {turnout.token}"})
    body = r.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "model"


def test_errors_in_openai_shape(turnout: TurnoutProcess) -> None:
    c = client(turnout)
    with pytest.raises(openai.NotFoundError) as ei:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert ei.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e2:
        c.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}], max_tokens="ten")  # type: ignore[arg-type]
    assert e2.value.body["param"] == "max_tokens"  # type: ignore[index]
    bad = openai.OpenAI(base_url=turnout.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    r = urllib3.request("POST", turnout.base_url + "/v1/chat/completions", body=b"{not json",
                        headers={"Authorization": f"Bearer {turnout.token}"})
    assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = urllib3.request("POST", turnout.base_url + "/v1/chat/completions",
                        json={"model": "fake", "messages": [{"role": "tool", "content": "x"}]},
                        headers={"Authorization": f"Bearer {turnout.token}"})
    assert r.status == 400 and r.json()["error"]["param"] == "messages.0.tool_call_id"


def test_worker_crash_mid_stream_openai(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(SLOW_CONFIG)
    stream = client(t).chat.completions.create(model="fake", max_tokens=50, stream=True,
                                               messages=[{"role": "user", "content": "a b [[crash:3]]"}])
    text = ""
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert "worker" in str(ei.value.message)
    assert "a b a".startswith(text) and text  # the stream had begun, in order
