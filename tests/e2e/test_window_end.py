"""An answer that fills the model's context window ends as Anthropic's API ends it
today (stop reason ``model_context_window_exceeded``), in every client API's own
words, streamed and not: a local model (the fake, whose window is 20 words) and an
Anthropic upstream that answers so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.upstreams.fake import FakeUpstreams
from turnout.supervisor.launch import TurnoutProcess

CONFIG = """
[server]
worker_wait_s = 10.0

[[models]]
name = "fake"
backend = "fake"
[models.options]
context_window = 20

[[endpoints]]
name = "ant"
provider = "anthropic"
base_url = "{url}/anthropic"
[[endpoints.models]]
name = "claude-test"
context_window = 200000
"""
PROMPT = "one two three four"  # 4 words of a 20-word window: 16 are left for the answer


@pytest.fixture(scope="module")
def t(tmp_path_factory: pytest.TempPathFactory, upstreams: FakeUpstreams) -> Iterator[TurnoutProcess]:
    tp = TurnoutProcess(CONFIG.format(url=upstreams.url), workdir=str(tmp_path_factory.mktemp("window")),
                        env={"TURNOUT_KEY_ANT": upstreams.keys["anthropic"]}).start()
    yield tp
    tp.stop()
    assert not tp.leftovers()


def ant(t: TurnoutProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)


def oai(t: TurnoutProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=t.base_url + "/v1", api_key=t.token, max_retries=0)


def user(text: str = PROMPT) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_anthropic_messages_not_streamed(t: TurnoutProcess) -> None:
    msg = ant(t).messages.create(model="fake", max_tokens=100, messages=user())
    assert msg.stop_reason == "model_context_window_exceeded"  # a value the SDK knows
    assert msg.usage.output_tokens == 16 and msg.content[0].type == "text"
    # within the window, max_tokens is max_tokens
    assert ant(t).messages.create(model="fake", max_tokens=16, messages=user()).stop_reason == "max_tokens"


def test_anthropic_messages_streamed(t: TurnoutProcess) -> None:
    with ant(t).messages.stream(model="fake", max_tokens=100, messages=user()) as s:
        deltas = [e for e in s if e.type == "message_delta"]
        final = s.get_final_message()
    assert [d.delta.stop_reason for d in deltas] == ["model_context_window_exceeded"]
    assert final.stop_reason == "model_context_window_exceeded" and final.usage.output_tokens == 16


def test_openai_chat_says_length(t: TurnoutProcess) -> None:
    r = oai(t).chat.completions.create(model="fake", max_tokens=100, messages=user())
    assert r.choices[0].finish_reason == "length" and r.usage is not None and r.usage.completion_tokens == 16
    finishes = [c.choices[0].finish_reason for c in oai(t).chat.completions.create(
        model="fake", max_tokens=100, messages=user(), stream=True) if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


def test_responses_are_incomplete(t: TurnoutProcess) -> None:
    r = oai(t).responses.create(model="fake", max_output_tokens=100, input=PROMPT)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    events = list(oai(t).responses.create(model="fake", max_output_tokens=100, input=PROMPT, stream=True))
    assert events[-1].type == "response.incomplete"


def test_an_anthropic_upstreams_stop_reason_reaches_every_api(t: TurnoutProcess) -> None:
    model, text = "ant/claude-test", "fill it [[window]]"
    assert ant(t).messages.create(model=model, max_tokens=100, messages=user(text)).stop_reason == \
        "model_context_window_exceeded"
    assert oai(t).chat.completions.create(model=model, max_tokens=100, messages=user(text)).choices[0] \
        .finish_reason == "length"
    r = oai(t).responses.create(model=model, max_output_tokens=100, input=text)
    assert r.status == "incomplete" and r.incomplete_details is not None
