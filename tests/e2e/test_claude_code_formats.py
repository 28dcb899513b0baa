"""The real Claude Code CLI (print mode) completes a tool round trip against tiny
random-weight GGUFs that carry real chat templates: Qwen3-Coder's and gpt-oss's.

The model's output is held by the forced-call grammar to the template's own
format (Qwen3-Coder's ``<tool_call><function=…><parameter=…>``, gpt-oss's
harmony channels), through the real tokenizer with those markers as control
tokens, so what turnout reads back is the real parse path: the template renders
Claude Code's request, the grammar comes from the family, the family's reader
turns the output into a ``tool_use``, and the next request (carrying the tool
result) renders again. Test knobs, as in the default-model test: ``force_tool``
makes the opening turn a Bash call and the turn after the result text;
``forced_string_max_chars`` lets random weights close a tagged argument; ``stop``
ends the random text answer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_claude_code_llama import run_claude
from tests.workers.formats.cases import template
from turnout.supervisor.launch import TurnoutProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
from tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.slow

FORMATS = {
    "qwen3-coder": ("Qwen3-Coder.jinja", ("<|endoftext|>", "<tool_response>", "</tool_response>")),
    "gpt-oss": ("openai-gpt-oss-120b.jinja",
                ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")),
}


def config(gguf: Path) -> str:
    return f"""
[server]
worker_wait_s = 60.0

[[models]]
name = "tiny-format"
backend = "llama_cpp"
path = "{gguf}"
aliases = ["claude-*"]
[models.options]
seed = 3
n_ctx = 32768
force_tool = "Bash"
forced_string_max_chars = 24
stop = [" ", "e", "a", "o"]
"""


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_claude_code_tool_round_trip_in_the_templates_own_format(
        name: str, tmp_path: Path, turnout_factory: Callable[..., TurnoutProcess]) -> None:
    tpl, specials = FORMATS[name]
    gguf = write_tiny_gguf(tmp_path / f"{name}.gguf", context_length=32768, chat_template=template(tpl),
                           specials=specials)
    t = turnout_factory(config(gguf))
    res, rec = run_claude(t, tmp_path / "home", "Run this exact shell command: echo turnout-e2e-ok",
                          "--tools", "Bash", "--allowedTools", "Bash(echo:*)", "--max-turns", "4",
                          timeout=300, CLAUDE_CODE_MAX_OUTPUT_TOKENS="512")
    first, second = rec.messages()[:2]
    a1 = first.answer()
    assert a1["stop_reason"] == "tool_use", a1
    (call,) = [b for b in a1["blocks"] if b["type"] == "tool_use"]
    assert call["name"] == "Bash" and isinstance(call["input"]["command"], str)
    # no marker of the format reached Claude Code
    shown = "".join(b.get("text", "") for b in a1["blocks"] if b["type"] == "text")
    for marker in (*specials, "<tool_call>", "<function=", "<parameter="):
        assert marker not in shown
    results = [p for msg in second.body["messages"] if msg["role"] == "user" and isinstance(msg["content"], list)
               for p in msg["content"] if p.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [call["id"]]
    a2 = second.answer()
    assert "error" not in a2 and a2["stop_reason"] in ("end_turn", "max_tokens"), a2
    assert res["is_error"] is False and res["num_turns"] == 2, res
