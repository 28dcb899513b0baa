"""Every parse case of llama.cpp's test-chat.cpp, read by turnout's family
readers: whole, and fed one character at a time (a marker split at any byte).

Compared as llama.cpp compares them: content and reasoning with surrounding
whitespace stripped, tool-call arguments as JSON values, ids as the model wrote
them. A continuation case (the last assistant message prefilled) is read from
where the prefill ends: what the prefill already holds is not expected again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.workers.formats.cases import case_id, cases, template
from workers import formats
from workers.formats.events import Call, Text, Thinking

# A partial case is a stream cut short. turnout sends a tool call when it is
# complete (never a call with half its arguments), so the partial cases that
# expect half-read calls are not for it; those that expect text or reasoning so
# far are read without the end of the stream.
PARSE_CASES = [c for c in cases() if not c["is_partial"] or not c["expect"].get("tool_calls")]


def read(case: dict[str, Any], chunks: list[str]) -> tuple[str, str, list[tuple[str, Any, str]]]:
    fam = formats.detect(template(case["template"]))
    reader = fam.new_reader(
        formats.ToolSet(case["tools"] or []),
        reasoning_open=formats.reasoning_open(fam, case["generation_prompt"]),
        raw_reasoning=case["reasoning_format"] == "none",
        tools_enabled=bool(case["tools"]),
        json_response=bool(case["json_schema"]),
    )
    events = []
    for chunk in chunks:
        events += reader.feed(chunk)
    if not case["is_partial"]:
        events += reader.finish()
    content = "".join(e.text for e in events if isinstance(e, Text))
    reasoning = "".join(e.text for e in events if isinstance(e, Thinking))
    calls = [(e.name, json.loads(e.arguments), e.id) for e in events if isinstance(e, Call)]
    return content.strip(), reasoning.strip(), calls


def expected(case: dict[str, Any]) -> tuple[str, str, list[tuple[str, Any, str]]]:
    e = case["expect"]
    content, reasoning = e.get("content") or "", e.get("reasoning_content") or ""
    if case["continue_final_message"]:
        prefill = case["messages"][-1]
        content = content.removeprefix(prefill.get("content") or "")
        reasoning = reasoning.removeprefix(prefill.get("reasoning_content") or "")
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]), c.get("id", ""))
             for c in e.get("tool_calls") or []]
    return content.strip(), reasoning.strip(), calls


@pytest.mark.parametrize("case", PARSE_CASES, ids=case_id)
def test_whole(case: dict[str, Any]) -> None:
    assert read(case, [case["input"]]) == expected(case)


@pytest.mark.parametrize("case", PARSE_CASES, ids=case_id)
def test_one_character_at_a_time(case: dict[str, Any]) -> None:
    assert read(case, list(case["input"])) == expected(case)
