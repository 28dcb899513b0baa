"""Prompt rendering: every system block reaches the prompt, tools and tool history
are written so the model's family can read them back, templates get what they can
take, and every chat template of llama.cpp's renders Claude Code's real requests."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from conftest import claude_code_request

from tests.workers.formats.cases import TEMPLATES, cases, template
from turnout.protocol.chat import (
    ChatRequest,
    Message,
    TextPart,
    ThinkingConfig,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from turnout.workers import chat_templates as ct
from turnout.workers.formats import render as fr

CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BASH = Tool("Bash", "Run a shell command", {"type": "object", "properties": {"command": {"type": "string"}}})


def builtins() -> dict[str, ct.Template]:
    return {
        "gemma": ct.detect("", "gemma3"),
        "chatml": ct.detect("", "qwen2", chat_format="chatml"),
        "llama3": ct.detect("", "llama", chat_format="llama3", bos_token="<|begin_of_text|>"),
        "mistral": ct.detect("", "llama", chat_format="mistral", bos_token="<s>", eos_token="</s>"),
        "gguf": ct.detect(CHATML_JINJA, "llama"),
    }


FORMATS = sorted(builtins())


def conversation(**kw: object) -> ChatRequest:
    return ChatRequest(
        model="m",
        max_tokens=10,
        system=[TextPart("BLOCK-ONE billing"), TextPart("BLOCK-TWO agent"), TextPart("BLOCK-THREE rules")],
        messages=[
            Message("user", [TextPart("first question")]),
            Message("system", [TextPart("MID-SYSTEM agents list")]),
            Message("assistant", [ToolUsePart("toolu_1", "Bash", {"command": "echo hi"})]),
            Message("user", [ToolResultPart("toolu_1", [TextPart("RESULT-hi")])]),
        ],
        tools=[BASH],
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_system_block_and_mid_conversation_system_reaches_the_prompt(fmt: str) -> None:
    prompt = ct.render(conversation(), builtins()[fmt]).prompt
    for needle in ("BLOCK-ONE", "BLOCK-TWO", "BLOCK-THREE", "MID-SYSTEM", "first question", "RESULT-hi"):
        assert needle in prompt, (fmt, needle)
    assert prompt.index("BLOCK-THREE") < prompt.index("first question") or fmt == "mistral"


@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_history_is_written_as_the_family_writes_calls(fmt: str) -> None:
    info = builtins()[fmt]
    prompt = ct.render(conversation(), info).prompt
    assert info.family.forced_call is not None
    assert info.family.forced_call("Bash", '{"command": "echo hi"}') in prompt
    assert prompt.index("echo hi") < prompt.index("RESULT-hi")


def test_gemma_folds_system_into_the_first_user_turn() -> None:
    prompt = ct.render(conversation(), builtins()["gemma"]).prompt
    assert prompt.startswith("<start_of_turn>user\nBLOCK-ONE billing\n\nBLOCK-TWO agent")
    assert "system" not in prompt.split("<start_of_turn>")[1][:5]
    assert prompt.endswith("<start_of_turn>model\n")
    assert prompt.count("<start_of_turn>") == prompt.count("<end_of_turn>") + 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_tools_are_offered_with_an_example_call_in_the_family_format(fmt: str) -> None:
    info = builtins()[fmt]
    prompt = ct.render(conversation(), info).prompt
    assert '"name": "Bash"' in prompt
    assert info.family.forced_call is not None
    example = info.family.forced_call("<tool name>", '{"<argument>": "<value>"}')
    assert example in prompt


@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_choice_none_offers_no_tools(fmt: str) -> None:
    r = ct.render(conversation(tool_choice=ToolChoice(type="none")), builtins()[fmt])
    assert not r.tools_enabled
    assert "Run a shell command" not in r.prompt
    assert "RESULT-hi" in r.prompt  # history still shown, as text


def test_mid_conversation_system_keeps_the_prefix_stable_across_turns() -> None:
    """Turn 1 ends with the system entry; turn 2 adds to it. The turn-1 prompt
    (without its generation prompt) must be a prefix of turn 2's, for KV reuse."""
    info = builtins()["gemma"]
    full = conversation()
    turn1 = ChatRequest(model="m", max_tokens=10, system=full.system, messages=full.messages[:2], tools=[BASH])
    p1 = ct.render(turn1, info).prompt.removesuffix("<start_of_turn>model\n")
    p2 = ct.render(full, info).prompt
    assert p2.startswith(p1)


def test_gguf_template_without_tool_support_gets_tool_instructions() -> None:
    r = ct.render(conversation(), builtins()["gguf"])
    assert r.tool_format == "generic"
    assert "<tools>" in r.prompt and r.prompt.endswith("<|im_start|>assistant\n")


def test_gguf_template_with_native_tools_receives_them() -> None:
    tpl = ("{% for t in tools %}TOOL:{{ t.function.name }};{% endfor %}"
           "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
           "{% for c in m.tool_calls or [] %}<call {{ c.function.name }} {{ c.function.arguments | tojson }}>{% endfor %}"
           "{% endfor %}")
    info = ct.detect(tpl, "qwen2")
    assert info.caps.tools and info.caps.tool_calls and info.caps.object_arguments
    prompt = ct.render(conversation(), info).prompt
    assert prompt.startswith("TOOL:Bash;[system]BLOCK-ONE")
    assert '<call Bash {"command": "echo hi"}>' in prompt


def test_template_errors_are_reported() -> None:
    info = ct.detect("{{ raise_exception('roles must alternate') }}", "llama")
    with pytest.raises(ct.TemplateError, match="roles must alternate"):
        ct.render(conversation(), info)


def test_stop_strings() -> None:
    infos = builtins()
    assert "<end_of_turn>" in infos["gemma"].stops
    assert "<|im_end|>" in infos["chatml"].stops
    assert "<|eot_id|>" in infos["llama3"].stops


def test_chat_format_and_tool_format_options() -> None:
    assert ct.detect("", "gemma3").chat_format == "gemma"
    assert ct.detect("", "phi3").chat_format == "chatml"
    assert ct.detect(CHATML_JINJA, "llama", tool_format="hermes").family.name == "hermes"
    with pytest.raises(ValueError, match="chat_format"):
        ct.detect("", "llama", chat_format="nope")
    with pytest.raises(ValueError, match="unknown tool_format 'nope'"):
        ct.detect(CHATML_JINJA, "llama", tool_format="nope")


def test_claude_code_request_renders_completely_for_the_default_model() -> None:
    req = claude_code_request("03-tool-bash-request-3.json")
    prompt = ct.render(req, builtins()["gemma"]).prompt
    for block in req.system:
        assert block.text.strip()[:200] in prompt
    assert "Available agent types for the Agent tool" in prompt  # the role: system entry
    assert "run echo hi" in prompt
    assert json.dumps({"name": "Bash", "arguments": {"command": "echo hi", "description": "Print hi"}}) in prompt
    # a base model gets a line a tool (tool_detail "brief"): every tool, its
    # arguments (optional ones marked), the first sentence of its description
    assert "\n- Bash(command: string, timeout?: number, description?: string" in prompt
    assert "): Executes a bash command and returns its output.\n" in prompt
    for t in req.tools:
        assert f"\n- {t.name}(" in prompt
    assert '"input_schema"' not in prompt and '"parameters"' not in prompt


def test_tool_detail_full_writes_the_json_specs_and_brief_is_a_fifth_of_the_prompt() -> None:
    req = claude_code_request("03-tool-bash-request-3.json")
    full = ct.render(req, ct.detect("", "gemma3", tool_detail="full")).prompt
    brief = ct.render(req, builtins()["gemma"]).prompt
    for t in req.tools:
        assert f'"name": "{t.name}"' in full
    assert json.dumps(t.description, ensure_ascii=False)[1:300] in full
    assert len(brief) * 4 < len(full)
    # an instruction model's own template that cannot describe tools gets them in full
    assert builtins()["gguf"].tool_detail == "full" and builtins()["gemma"].tool_detail == "brief"
    with pytest.raises(ValueError, match="tool_detail must be one of full, brief"):
        ct.detect("", "gemma3", tool_detail="short")


def test_assistant_prefill_is_continued_not_closed() -> None:
    req = ChatRequest(model="m", max_tokens=5, messages=[
        Message("user", [TextPart("Say hi")]), Message("assistant", [TextPart("Hi, my name")])])
    prompt = ct.render(req, builtins()["gguf"]).prompt
    assert prompt.endswith("<|im_start|>assistant\nHi, my name")


def test_earlier_reasoning_reaches_templates_that_show_it() -> None:
    tpl = ("{% for m in messages %}[{{ m.role }}]{% if m.reasoning_content %}<think>{{ m.reasoning_content }}"
           "</think>{% endif %}{{ m.content }}{% endfor %}")
    req = ChatRequest(model="m", max_tokens=5, thinking=ThinkingConfig("enabled", 1024), messages=[
        Message("user", [TextPart("q")]),
        Message("assistant", [ThinkingPart("let me see", "sig"), TextPart("a")]),
        Message("user", [TextPart("q2")])])
    assert "[assistant]<think>let me see</think>a" in ct.render(req, ct.detect(tpl, "qwen3")).prompt


# ---------------------------------------------------------------- llama.cpp's templates

TEMPLATE_FILES = sorted(p.name for p in TEMPLATES.glob("*.jinja"))
CLAUDE_CODE = ["01-print-hello-request-2.json", "03-tool-bash-request-3.json", "52-model-claude-haiku-4-5-request-2.json",
               "19-local-friendly-knobs-request-2.json"]


@pytest.mark.parametrize("name", TEMPLATE_FILES)
@pytest.mark.parametrize("fixture", CLAUDE_CODE, ids=lambda f: f[:10])
@pytest.mark.parametrize("thinking", [False, True], ids=["plain", "thinking"])
def test_every_template_renders_claude_codes_requests(name: str, fixture: str, thinking: bool) -> None:
    info = ct.detect(template(name), "llama", bos_token="<s>", eos_token="</s>")
    req = claude_code_request(fixture)
    req.thinking = ThinkingConfig("enabled" if thinking else "disabled", 4096 if thinking else 0)
    r = ct.render(req, info)
    assert req.system[-1].text.strip()[-200:] in r.prompt  # the whole system prompt
    last_user = [p for p in req.messages[-1].content if isinstance(p, TextPart | ToolResultPart)]
    assert last_user, fixture
    assert r.tools_enabled
    for tool in ("Bash", "Write", "Agent"):
        assert tool in r.prompt, (name, tool)
    if fixture.startswith("03"):
        assert "echo hi" in r.prompt  # the earlier call and its result
        assert "hi\n" in r.prompt or "hi" in r.prompt.split("echo hi", 1)[1]


RENDER_CASES = cases()
# Where turnout renders on purpose differently from llama.cpp: a template that
# does not describe tools gets them in its system message; firefunction's
# template names the tool list `functions`, which llama.cpp leaves undefined (so
# its prompt lists no tools); turnout passes it.
DIFFERENT_ON_PURPOSE = {"fireworks-ai-llama-3-firefunction-v2.jinja"}


@pytest.mark.parametrize("case", RENDER_CASES, ids=lambda c: f"{c['id']}-{c['template'].removesuffix('.jinja')}")
def test_prompts_match_llama_cpps_for_its_own_cases(case: dict) -> None:
    """The same conversation, tools and thinking flag render to the prompt
    llama.cpp rendered (its own Jinja engine): one check of both the sandbox and
    the way messages are fitted to each template."""
    if case["template"] in DIFFERENT_ON_PURPOSE:
        pytest.skip("renders the tool list that llama.cpp leaves out")
    info = fr.load_template(template(case["template"]))
    last = case["messages"][-1]
    if case["continue_final_message"] and last.get("reasoning_content"):
        pytest.skip("a prefilled reasoning block: turnout takes prefills of text only (Anthropic's assistant prefill)")
    if case["tools"] and not info.caps.tools:
        pytest.skip("the template does not describe tools: turnout describes them in the system message")
    msgs, _ = fr.fit_messages(case["messages"], info, case["tools"] or [])
    prompt = fr.render_messages(msgs, info, tools=case["tools"] or [], thinking=case["enable_thinking"],
                                now=datetime(2026, 12, 1))
    assert prompt == case["prompt"]


def test_brief_tool_lines_take_any_schema_a_client_sends() -> None:
    from turnout.workers.formats.tooltext import brief_tool_lines

    deep: dict[str, object] = {"type": "string"}
    for _ in range(2000):
        deep = {"type": "array", "items": deep}
    odd = [{"type": "function", "function": {"name": "a", "description": None, "parameters": [1, 2]}},
           {"type": "function", "function": {"name": "b", "description": 5,
                                             "parameters": {"properties": [1], "required": "x"}}},
           {"type": "function", "function": {"name": "c", "description": "Does x. Then y.", "parameters": {
               "properties": {"p": {"type": ["string", "null"]}, "q": deep, "r": {"anyOf": []}},
               "required": [1, "q", {}]}}}]
    assert brief_tool_lines(odd) == [
        "- a()", "- b(): 5",
        "- c(p?: string|null, q: array of array of array of array of any, r?: any): Does x."]
