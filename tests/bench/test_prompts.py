"""Deterministic prompt generation."""

from __future__ import annotations

import json

from turnout.bench import prompts


def test_same_seed_same_prompt_other_seed_other_prompt() -> None:
    a = prompts.single_turn(2000, seed=1)
    assert json.dumps(a.body("m")) == json.dumps(prompts.single_turn(2000, seed=1).body("m"))
    assert a.messages != prompts.single_turn(2000, seed=2).messages


def test_sizes_follow_words_per_token() -> None:
    words = len(prompts.single_turn(2000, seed=1, words_per_token=0.5).messages[0]["content"].split())
    assert 990 <= words <= 1010


def test_conversation_shape_like_claude_code() -> None:
    c = prompts.conversation("multi_20k_tools", 20000, seed=3, tool_overhead_tokens=16000, turns=4)
    assert len(c.tools) == 24 and len(c.system) == 3
    roles = [m["role"] for m in c.messages]
    assert roles[0] == "user" and roles[-1] == "user"
    uses = [b for m in c.messages if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use"]
    results = [b for m in c.messages if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"]
    assert [u["id"] for u in uses] == [r["tool_use_id"] for r in results] and len(uses) == 4
    assert c.messages == prompts.conversation("multi_20k_tools", 20000, seed=3, tool_overhead_tokens=16000, turns=4).messages


def test_follow_up_keeps_the_prefix() -> None:
    c = prompts.conversation("multi_20k_tools", 5000, seed=3)
    f = prompts.follow_up(c, "answer", seed=9)
    assert f.messages[: len(c.messages)] == c.messages
    assert f.messages[-2] == {"role": "assistant", "content": "answer"} and f.messages[-1]["role"] == "user"
