"""Every parse case of llama.cpp's test-chat.cpp, read by turnout's family
readers: whole, and fed one character at a time (a marker split at any byte).

Compared as llama.cpp compares them: content and reasoning with surrounding
whitespace stripped, tool-call arguments as JSON values, ids as the model wrote
them. A continuation case (the last assistant message prefilled) is read from
where the prefill ends: what the prefill already holds is not expected again.

A partial case is a stream cut short: the calls it expects are the reader's
calls in progress (``Reader.partial_calls``), their arguments a JSON prefix
compared as text, the whitespace between tokens aside (``{"arg1": `` is
``{"arg1":``). llama.cpp's test-chat.cpp compares arguments through
``renormalize_json``, which maps any JSON that does not parse to "": it checks
only that a partial call's arguments are unfinished; this is stricter."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.workers.formats.cases import case_id, cases, template
from turnout.workers import formats
from turnout.workers.formats.events import Call, Text, Thinking

PARSE_CASES = cases()
PARTIAL_CALLS = [c for c in cases() if c["is_partial"] and c["expect"].get("tool_calls")]


def args_value(text: str) -> Any:
    """Arguments as a JSON value; a prefix (a partial call's) as its text
    without the whitespace between tokens."""
    try:
        return json.loads(text)
    except ValueError:
        return re.sub(r'("(?:[^"\\]|\\.)*"?)|\s+', lambda m: m.group(1) or "", text)


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
    else:
        events += reader.partial_calls()
    content = "".join(e.text for e in events if isinstance(e, Text))
    reasoning = "".join(e.text for e in events if isinstance(e, Thinking))
    calls = [(e.name, args_value(e.arguments), e.id) for e in events if isinstance(e, Call)]
    return content.strip(), reasoning.strip(), calls


def expected(case: dict[str, Any]) -> tuple[str, str, list[tuple[str, Any, str]]]:
    e = case["expect"]
    content, reasoning = e.get("content") or "", e.get("reasoning_content") or ""
    if case["continue_final_message"]:
        prefill = case["messages"][-1]
        content = content.removeprefix(prefill.get("content") or "")
        reasoning = reasoning.removeprefix(prefill.get("reasoning_content") or "")
    calls = [(c["function"]["name"], args_value(c["function"]["arguments"]), c.get("id", ""))
             for c in e.get("tool_calls") or []]
    return content.strip(), reasoning.strip(), calls


@pytest.mark.parametrize("case", PARSE_CASES, ids=case_id)
def test_whole(case: dict[str, Any]) -> None:
    assert read(case, [case["input"]]) == expected(case)


@pytest.mark.parametrize("case", PARSE_CASES, ids=case_id)
def test_one_character_at_a_time(case: dict[str, Any]) -> None:
    assert read(case, list(case["input"])) == expected(case)


def test_partial_cases_are_read() -> None:
    """The partial cases that expect a call in progress are among those read."""
    assert len(PARTIAL_CALLS) == 8
    assert all(c in PARSE_CASES for c in PARTIAL_CALLS)
