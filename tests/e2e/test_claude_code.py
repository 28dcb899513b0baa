"""The real Claude Code CLI (print mode) against turnout with the fake backend."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import claude_bin
from turnout.supervisor.launch import TurnoutProcess

pytestmark = pytest.mark.slow  # the real Claude Code CLI


def claude(t: TurnoutProcess, tmp_path: Path, *args: str, **env: str) -> dict[str, object]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    full_env = {
        "PATH": os.environ["PATH"], "HOME": str(home),
        "ANTHROPIC_BASE_URL": t.base_url, "ANTHROPIC_AUTH_TOKEN": t.token,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", **env,
    }
    out = subprocess.run([claude_bin(), "-p", *args, "--output-format", "json"], cwd=work, env=full_env,
                         capture_output=True, text=True, timeout=120)
    print("claude stdout:", out.stdout[-2000:], "\nclaude stderr:", out.stderr[-2000:])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_print_mode_answers(turnout: TurnoutProcess, tmp_path: Path) -> None:
    res = claude(turnout, tmp_path, "say hello")
    assert res["is_error"] is False and res["result"]
    assert res["usage"]["input_tokens"] > 1000  # type: ignore[index]


def test_model_flag_reaches_turnout(turnout: TurnoutProcess, tmp_path: Path) -> None:
    res = claude(turnout, tmp_path, "hi", "--model", "some-local-model")
    assert res["is_error"] is False
    assert "some-local-model" in json.dumps(res["modelUsage"])


def test_tool_round_trip(turnout: TurnoutProcess, tmp_path: Path) -> None:
    """The fake answers with a Bash tool_use; Claude Code runs it and sends the
    tool_result back; the fake's answer echoes the command's output."""
    prompt = '[[tool:Bash {"command": "echo turnout-tool-ok", "description": "print a marker"}]]'
    res = claude(turnout, tmp_path, prompt, "--allowedTools", "Bash")
    assert res["num_turns"] == 2
    assert str(res["result"]).startswith("turnout-tool-ok")
