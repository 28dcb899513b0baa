"""``turnout formats``, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.workers.formats.cases import TEMPLATES

CLAUDE_CODE = Path(__file__).resolve().parents[2] / "fixtures" / "claude-code"


def turnout(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turnout.cli", "formats", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_list_names_every_family() -> None:
    from turnout.workers import formats

    r = turnout("list", "--json")
    assert r.returncode == 0, r.stderr
    names = [f["name"] for f in json.loads(r.stdout)]
    assert names == list(formats.registry())
    assert "qwen3-coder" in names and "generic" in names


def test_parse_reads_a_qwen3_coder_call_typed_by_the_tools(tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "Bash", "description": "run", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}}}}]))
    output = ("<think>\nlist them\n</think>\n\nLet me check.\n<tool_call>\n<function=Bash>\n<parameter=command>\n"
              "ls -la\n</parameter>\n<parameter=timeout>\n5\n</parameter>\n</function>\n</tool_call>")
    r = turnout("parse", "--template", str(TEMPLATES / "Qwen3.5-4B.jinja"), "--tools", str(tools), "--thinking",
                stdin=output.removeprefix("<think>\n"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"content": "Let me check.\n", "reasoning": "list them\n",
                                    "tool_calls": [{"name": "Bash", "arguments": {"command": "ls -la", "timeout": 5}}]}


def test_parse_without_tools_reads_calls_of_any_name() -> None:
    output = "Sure.<tool_call>\n<function=Bash>\n<parameter=command>\nls\n</parameter>\n</function>\n</tool_call>"
    r = turnout("parse", "--template", str(TEMPLATES / "Qwen3-Coder.jinja"), stdin=output)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tool_calls"] == [{"name": "Bash", "arguments": {"command": "ls"}}]


def test_render_prints_the_prompt_for_a_captured_claude_code_request() -> None:
    r = turnout("render", "--template", str(TEMPLATES / "Qwen3-Coder.jinja"),
                "--request", str(CLAUDE_CODE / "03-tool-bash-request-3.json"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<|im_start|>system\n")
    assert "<function=Bash>\n<parameter=command>\necho hi\n</parameter>" in r.stdout
    assert r.stdout.endswith("<|im_start|>assistant\n")


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    r = turnout("parse", "--template", str(tmp_path / "nope.jinja"))
    assert r.returncode != 0 and "no such file" in r.stderr
    bad = tmp_path / "tools.json"
    bad.write_text('{"not": "a list"}')
    r = turnout("parse", "--template", str(TEMPLATES / "Qwen3-Coder.jinja"), "--tools", str(bad))
    assert r.returncode != 0 and "list of Anthropic tool definitions" in r.stderr
    r = turnout("render", "--template", str(TEMPLATES / "Qwen3-Coder.jinja"), "--tool-format", "nope",
                "--request", str(CLAUDE_CODE / "03-tool-bash-request-3.json"))
    assert r.returncode != 0 and "unknown tool_format 'nope'" in r.stderr
