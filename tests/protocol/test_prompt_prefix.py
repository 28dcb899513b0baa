"""The cache-friendly prompt order, on the real Claude Code requests."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from turnout.gateway.anthropic import parse_messages
from turnout.protocol import prompt_prefix as pp
from turnout.protocol.chat import ChatRequest, Message, TextPart, Tool
from turnout.workers import chat_templates as ct

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code"
GEMMA = ct.detect("", "gemma3", bos_token="<bos>", eos_token="<eos>", tool_detail="full")
CHATML = ct.detect("", "qwen2", chat_format="chatml", tool_detail="full")

MAIN = "01-print-hello-request-2.json"  # session A
OTHER = "03-tool-bash-request-2.json"  # session B: other billing hash, other first words
OTHER_TURN2 = "03-tool-bash-request-3.json"
OTHER_MODEL = "04-model-flag-request-2.json"  # --model some-local-model


def request(name: str) -> ChatRequest:
    return parse_messages(json.dumps(json.loads((FIXTURES / name).read_text())["body"]).encode())


def texts(req: ChatRequest) -> Counter[str]:
    """Every piece of text the model is given (split into lines: a moved section
    leaves its block), billing header aside."""
    out: Counter[str] = Counter()
    parts: list[Any] = [*req.system]
    for msg in req.messages:
        parts.extend(msg.content)
    for p in parts:
        if isinstance(p, TextPart) and not p.text.startswith(pp.BILLING_HEADER):
            out.update(line for line in p.text.splitlines() if line.strip())
    return out


def common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def render(req: ChatRequest, info: ct.TemplateInfo = GEMMA) -> str:
    return ct.render(req, info).prompt


def test_billing_header_is_dropped_and_nothing_else_is_lost() -> None:
    for name in (MAIN, OTHER_TURN2, OTHER_MODEL, "52-model-claude-haiku-4-5-request-2.json"):
        req = request(name)
        assert req.system[0].text.startswith(pp.BILLING_HEADER)
        out = pp.cache_friendly(req)
        assert not any(pp.BILLING_HEADER in p.text for p in out.system)
        assert texts(out) == texts(req), name
        assert out.tools == req.tools


def test_two_sessions_share_everything_but_their_own_words() -> None:
    a, b = request(MAIN), request(OTHER)
    assert common(render(a), render(b)) < 100  # as sent: they part at the billing hash
    fa, fb = render(pp.cache_friendly(a)), render(pp.cache_friendly(b))
    n = common(fa, fb)
    # The system prompt, the 24 tools, the agent list, the environment and the date:
    # they part only where the user's first words ("say hello" / "run echo hi") start.
    assert fa[n:].startswith("say hello") and fb[n:].startswith("run echo hi")
    assert n > 0.97 * len(fa)


def test_volatile_sections_come_after_the_tools() -> None:
    out = pp.cache_friendly(request(MAIN))
    system = "\n".join(p.text for p in out.system)
    assert "# Environment" not in system and "You are powered by the model" not in system
    assert "# Context management" in system  # the section after it stays
    prompt = render(out)
    tools_end = prompt.index('"name": "Write"')
    env = prompt.index("# Environment\nYou have been invoked")
    agents = prompt.index("Available agent types for the Agent tool")
    assert tools_end < agents < env < prompt.index("say hello")


def test_another_model_shares_the_system_prompt_before_the_tools() -> None:
    """--model changes the model-name line (moved) and the Bash tool's Co-Authored-By
    line (left: it is in the tool): the stable system text is shared."""
    a, c = pp.cache_friendly(request(MAIN)), pp.cache_friendly(request(OTHER_MODEL))
    n = common(render(a), render(c))
    assert n > len("".join(p.text for p in a.system))
    assert render(a)[n:].startswith(("# Tools", "\n# Tools", "Tools")) or n > render(a).index("# Tools")


def test_the_next_turn_extends_the_previous_prompt() -> None:
    """Within a session the prompt only grows, so the live cache and the end-of-prompt
    state are reused turn after turn."""
    t2, t3 = render(pp.cache_friendly(request(OTHER))), render(pp.cache_friendly(request(OTHER_TURN2)))
    assert t2.endswith("<start_of_turn>model\n") and t3.startswith(t2)


def test_system_entries_after_the_first_answer_stay_in_place() -> None:
    req = ChatRequest(model="m", max_tokens=8, system=[TextPart("sys")], messages=[
        Message("user", [TextPart("one")]), Message("system", [TextPart("early note")]),
        Message("assistant", [TextPart("ok")]), Message("system", [TextPart("late note")]),
        Message("user", [TextPart("two")])])
    out = pp.cache_friendly(req)
    assert [m.role for m in out.messages] == ["user", "assistant", "system", "user"]
    assert [p.text for p in out.messages[0].content] == ["early note", "one"]  # type: ignore[union-attr]
    assert out.messages[2].content[0].text == "late note"  # type: ignore[union-attr]


def test_other_clients_pass_through_unchanged() -> None:
    req = ChatRequest(model="m", max_tokens=8, system=[TextPart("You are terse.")],
                      tools=[Tool("f", "does f")], messages=[Message("user", [TextPart("hi")])])
    assert pp.cache_friendly(req) is req
    assert pp.cache_friendly(ChatRequest(model="m", max_tokens=8, messages=[])).messages == []


def test_older_claude_code_env_block_and_date_line_move_too() -> None:
    system = ("You are Claude Code.\n\n<env>\nWorking directory: /p\nToday's date: 2025-06-01\n</env>\n"
              "You are powered by the model named Sonnet 4. The exact model ID is claude-sonnet-4.\n\n"
              "Be brief.\ngitStatus: This is the git status at the start of the conversation.\nCurrent branch: main")
    req = ChatRequest(model="m", max_tokens=8, system=[TextPart(system)], messages=[Message("user", [TextPart("hi")])])
    out = pp.cache_friendly(req)
    assert [p.text for p in out.system] == ["You are Claude Code.\n\nBe brief."]
    lead = out.messages[0].content[0].text  # type: ignore[union-attr]
    for piece in ("<env>", "Today's date: 2025-06-01", "You are powered by the model named Sonnet 4",
                  "gitStatus:", "Current branch: main"):
        assert piece in lead
    assert out.messages[0].content[-1].text == "hi"  # type: ignore[union-attr]


def test_transform_is_idempotent() -> None:
    once = pp.cache_friendly(request(MAIN))
    assert pp.cache_friendly(once) == once


@pytest.mark.parametrize("info", [GEMMA, CHATML], ids=["gemma", "chatml"])
def test_probes_find_where_sessions_part(info: ct.TemplateInfo) -> None:
    for name in (MAIN, OTHER):
        p = pp.plan(request(name))
        prompt = render(p.request, info)
        for stable, marker in ((True, "# Environment\nYou have been invoked"),
                               (False, "Available agent types for the Agent tool")):
            a, b = render(p.probe("\x01", stable=stable), info), render(p.probe("\x02", stable=stable), info)
            n = common(a, b)
            assert prompt[:n] == a[:n]  # the real prompt starts with the shared text
            assert 0 <= prompt.index(marker) - n < 4  # which ends where the varying part starts


def test_prefix_key_names_what_sessions_share() -> None:
    assert pp.prefix_key(request(MAIN)) == pp.prefix_key(request(OTHER)) == pp.prefix_key(request(OTHER_TURN2))
    assert pp.prefix_key(request(MAIN)) != pp.prefix_key(request(OTHER_MODEL))  # other Bash tool text
