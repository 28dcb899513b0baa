"""The real Codex CLI (npm ``@openai/codex``, ``codex exec``) against turnout over the
Responses API, with the fake backend: a plain answer, and a tool round trip (the
fake calls Codex's ``exec_command``, Codex runs it and sends the output back, the
fake's next answer repeats it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import tool_bin
from turnout.supervisor.launch import TurnoutProcess

pytestmark = pytest.mark.slow  # the real Codex CLI


def codex(t: TurnoutProcess, home: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    (home / "config.toml").write_text(f"""
model = "fake"
model_provider = "turnout"
[model_providers.turnout]
name = "turnout"
base_url = "{t.base_url}/v1"
env_key = "TURNOUT_API_KEY"
wire_api = "responses"
""")
    env = {**os.environ, "CODEX_HOME": str(home), "TURNOUT_API_KEY": t.token}
    return subprocess.run([tool_bin("codex", "Codex CLI"), "exec", "--skip-git-repo-check", prompt],
                          capture_output=True, text=True, env=env, timeout=120, cwd=home, stdin=subprocess.DEVNULL)


def test_codex_exec_answers_and_runs_a_tool(turnout: TurnoutProcess, tmp_path: Path) -> None:
    r = codex(turnout, tmp_path, "say hello")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "say hello" in r.stdout  # the fake repeats the user's words
    r = codex(turnout, tmp_path, '[[tool:exec_command {"cmd": "echo turnout-tool-ok"}]]')
    assert r.returncode == 0, r.stderr[-2000:]
    assert "turnout-tool-ok" in r.stderr  # Codex ran it (and shows its output)
    assert "Process exited with code 0" in r.stdout  # the answer to the tool's output came back through turnout
    calls = [e for e in turnout.log_events() if e.get("event") == "http" and e.get("path") == "/v1/responses"]
    assert len(calls) >= 3 and all(e["status"] == 200 for e in calls), calls
