"""Prompt rendering: every system block reaches the prompt, tools and tool history
are written in each family's format, stop strings come from the family."""

from __future__ import annotations

import json

import pytest
from conftest import claude_code_request

from protocol.chat import (
    ChatRequest,
    Message,
    TextPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from workers import chat_templates as ct

CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BASH = Tool("Bash", "Run a shell command", {"type": "object", "properties": {"command": {"type": "string"}}})


def infos() -> dict[str, ct.TemplateInfo]:
    return {
        "gemma": ct.detect("", "gemma3"),
        "chatml": ct.detect("", "qwen2", chat_format="chatml"),
        "llama3": ct.detect("", "llama", chat_format="llama3", bos_token="<|begin_of_text|>"),
        "mistral": ct.detect("", "llama", chat_format="mistral", bos_token="<s>", eos_token="</s>"),
        "gguf": ct.detect(CHATML_JINJA, "llama"),
    }


FAMILIES = sorted(infos())


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


@pytest.mark.parametrize("family", FAMILIES)
def test_every_system_block_and_mid_conversation_system_reaches_the_prompt(family: str) -> None:
    prompt = ct.render(conversation(), infos()[family]).prompt
    for needle in ("BLOCK-ONE", "BLOCK-TWO", "BLOCK-THREE", "MID-SYSTEM", "first question", "RESULT-hi"):
        assert needle in prompt, (family, needle)
    assert prompt.index("BLOCK-THREE") < prompt.index("first question") or family == "mistral"


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_history_is_rendered(family: str) -> None:
    prompt = ct.render(conversation(), infos()[family]).prompt
    assert "echo hi" in prompt and prompt.index("echo hi") < prompt.index("RESULT-hi")


def test_gemma_folds_system_into_the_first_user_turn() -> None:
    prompt = ct.render(conversation(), infos()["gemma"]).prompt
    assert prompt.startswith("<start_of_turn>user\nBLOCK-ONE billing\n\nBLOCK-TWO agent")
    assert "system" not in prompt.split("<start_of_turn>")[1][:5]
    assert prompt.endswith("<start_of_turn>model\n")
    assert prompt.count("<start_of_turn>") == prompt.count("<end_of_turn>") + 1


@pytest.mark.parametrize(
    ("family", "marker"),
    [("chatml", "<tools>"), ("llama3", '"parameters": dictionary'), ("mistral", "[AVAILABLE_TOOLS]"), ("gemma", '{"name": "<tool name>"')],
)
def test_tools_are_offered_in_the_family_format(family: str, marker: str) -> None:
    prompt = ct.render(conversation(), infos()[family]).prompt
    assert marker in prompt
    assert '"name": "Bash"' in prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_choice_none_offers_no_tools(family: str) -> None:
    r = ct.render(conversation(tool_choice=ToolChoice(type="none")), infos()[family])
    assert not r.tools_enabled
    assert "Run a shell command" not in r.prompt
    assert "RESULT-hi" in r.prompt  # history still shown, as text


def test_hermes_history_uses_tool_call_tags() -> None:
    prompt = ct.render(conversation(), infos()["chatml"]).prompt
    assert '<tool_call>\n{"name": "Bash", "arguments": {"command": "echo hi"}}\n</tool_call>' in prompt
    assert "<tool_response>\nRESULT-hi\n</tool_response>" in prompt


def test_mid_conversation_system_keeps_the_prefix_stable_across_turns() -> None:
    """Turn 1 ends with the system entry; turn 2 adds to it. The turn-1 prompt
    (without its generation prompt) must be a prefix of turn 2's, for KV reuse."""
    info = infos()["gemma"]
    full = conversation()
    turn1 = ChatRequest(model="m", max_tokens=10, system=full.system, messages=full.messages[:2], tools=[BASH])
    p1 = ct.render(turn1, info).prompt
    p2 = ct.render(full, info).prompt
    assert p2.startswith(p1)


def test_gguf_template_gets_tool_instructions_when_it_has_no_tools_support() -> None:
    r = ct.render(conversation(), infos()["gguf"])
    assert r.tool_format == "hermes"
    assert "<tools>" in r.prompt and r.prompt.endswith("<|im_start|>assistant\n")


def test_gguf_template_with_native_tools_receives_them() -> None:
    tpl = "{% for t in tools %}TOOL:{{ t.function.name }};{% endfor %}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    info = ct.detect(tpl, "qwen2")
    prompt = ct.render(conversation(), info).prompt
    assert prompt.startswith("TOOL:Bash;[system]BLOCK-ONE")


def test_template_errors_are_reported() -> None:
    info = ct.detect("{{ raise_exception('roles must alternate') }}", "llama")
    with pytest.raises(ct.TemplateError, match="roles must alternate"):
        ct.render(conversation(), info)


def test_stop_strings_per_family() -> None:
    assert "<end_of_turn>" in infos()["gemma"].stop
    assert "<|im_end|>" in infos()["gguf"].stop
    assert "<|eot_id|>" in infos()["llama3"].stop


def test_detection_from_template_markers() -> None:
    assert ct.detect("{{ '<|start_header_id|>' }} ipython", "llama").tool_format == "llama3"
    assert ct.detect("[INST] [TOOL_CALLS]", "llama").tool_format == "mistral"
    assert ct.detect("<tool_call>", "qwen2").tool_format == "hermes"
    assert ct.detect("", "gemma3").family == "gemma"
    assert ct.detect("", "phi3").family == "chatml"
    with pytest.raises(ValueError):
        ct.detect("", "llama", chat_format="nope")


def test_claude_code_request_renders_completely() -> None:
    req = claude_code_request("03-tool-bash-request-3.json")
    prompt = ct.render(req, infos()["gemma"]).prompt
    for block in req.system:
        assert block.text.strip()[:200] in prompt
    assert "Available agent types for the Agent tool" in prompt  # the role: system entry
    assert "run echo hi" in prompt
    assert json.dumps({"name": "Bash", "arguments": {"command": "echo hi", "description": "Print hi"}}) in prompt
    for name in ("Agent", "Bash", "WebFetch", "Write"):
        assert f'"name": "{name}"' in prompt


def test_base_models_get_default_end_of_turn_strings_that_stop_replaces() -> None:
    assert ct.extra_stops(None, "gemma", base_model=True) == ct.BASE_MODEL_STOPS["gemma"] == ["\n"]
    assert ct.extra_stops(None, "chatml", base_model=True) == ct.BASE_MODEL_STOPS_OTHER
    assert ct.extra_stops(["User:"], "gemma", base_model=True) == ["User:"]  # replaces the defaults
    assert ct.extra_stops([], "gemma", base_model=True) == []  # turns them off
    assert ct.extra_stops(None, "gguf", base_model=False) == []  # a template's EOG ends an instruction model
    assert ct.extra_stops(["###"], "gguf", base_model=False) == ["###"]
