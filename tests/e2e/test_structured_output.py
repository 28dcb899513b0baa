"""Structured output through a real turnout and a llama.cpp worker (tiny random
GGUF): the official OpenAI SDK's ``chat.completions.parse`` and ``responses.parse``
with a Pydantic model, and the Anthropic SDK's ``output_config.format``; random weights, so only the
grammar can make these parse."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import anthropic
import openai
from pydantic import BaseModel, ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
from tiny_gguf import write_tiny_gguf

from turnout.supervisor.launch import TurnoutProcess


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool
    score: int
    colour: Literal["red", "green", "blue"]


def test_sdks_get_the_schema_they_asked_for(tmp_path: Path, turnout_factory: Callable[..., TurnoutProcess]) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    t = turnout_factory(f"""
[server]
worker_wait_s = 30.0

[[models]]
name = "tiny"
backend = "llama_cpp"
path = "{gguf}"
[models.options]
temperature = 1.0
""")
    oc = openai.OpenAI(base_url=t.base_url + "/v1", api_key=t.token, max_retries=0)
    for _ in range(3):
        done = oc.chat.completions.parse(model="tiny", max_tokens=120, response_format=Verdict,
                                         messages=[{"role": "user", "content": "judge"}])
        v = done.choices[0].message.parsed
        assert isinstance(v, Verdict) and done.choices[0].finish_reason == "stop"
    parsed = oc.responses.parse(model="tiny", input="judge", text_format=Verdict, max_output_tokens=120)
    assert isinstance(parsed.output_parsed, Verdict)
    ac = anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)
    msg = ac.messages.create(model="tiny", max_tokens=120, messages=[{"role": "user", "content": "judge"}],
                             extra_body={"output_config": {"format": {"type": "json_schema",
                                                                      "schema": Verdict.model_json_schema()}}})
    Verdict.model_validate(json.loads(msg.content[0].text))  # type: ignore[union-attr]
