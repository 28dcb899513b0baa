"""The real Claude Code CLI (print mode, HOME in a temp dir) set up by `turnout
claude setup`: the MCP server shows as connected, the model switches its own
session's endpoint through `mcp__turnout__endpoint_set`, and `turnout claude
remove` leaves the files as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_claude_code import claude_bin
from tests.e2e.test_mcp import TWO_FAKES
from turnout.supervisor.launch import TurnoutProcess

pytestmark = pytest.mark.slow  # the real Claude Code CLI

ROOT = Path(__file__).resolve().parents[2]

USER_SETTINGS = '{\n  "theme": "dark",\n  "env": {"MY_OWN": "kept"}\n}\n'


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    print(cmd[:3], "stdout:", out.stdout[-2000:], "\nstderr:", out.stderr[-2000:])
    return out


def test_setup_switch_in_conversation_and_remove(turnout_factory: object, tmp_path: Path) -> None:
    exe = claude_bin()
    t: TurnoutProcess = turnout_factory(TWO_FAKES)  # type: ignore[operator]
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".claude").mkdir(parents=True)
    work.mkdir()
    settings, cj = home / ".claude" / "settings.json", home / ".claude.json"
    settings.write_text(USER_SETTINGS)
    cj.write_text(json.dumps({"hasCompletedOnboarding": True,
                              "projects": {str(work): {"hasTrustDialogAccepted": True}}}))
    before_settings, before_cj = settings.read_bytes(), json.loads(cj.read_text())
    env = {"PATH": f"{Path(exe).parent}:{os.environ['PATH']}", "HOME": str(home),
           "XDG_STATE_HOME": str(home / ".local/state"), "XDG_CONFIG_HOME": str(home / ".config"),
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1"}
    turnout = [sys.executable, "-m", "turnout.cli"]
    # the token comes from the keyring normally; here turnout runs with TURNOUT_TOKEN
    setup_env = {**env, "TURNOUT_TOKEN": t.token, "PYTHONPATH": str(ROOT)}

    out = run([*turnout, "claude", "--config", str(t.config_path), "--url", t.base_url, "setup"], setup_env, work)
    assert out.returncode == 0, out.stderr
    assert t.token not in out.stdout + out.stderr  # a secret is never printed
    written = json.loads(settings.read_text())
    assert written["theme"] == "dark" and written["env"]["MY_OWN"] == "kept"
    assert written["env"]["ANTHROPIC_BASE_URL"] == t.base_url

    out = run([exe, "mcp", "list"], env, work)
    assert out.returncode == 0
    line = next(x for x in out.stdout.splitlines() if x.startswith("turnout"))
    assert "Connected" in line, line

    # Turn 1: the fake answers with a tool_use of the MCP tool; Claude Code calls
    # it; turn 2 (the tool_result) is the session's next request.
    prompt = '[[tool:mcp__turnout__endpoint_set {"target": "fake2"}]]'
    out = run([exe, "-p", prompt, "--allowedTools", "mcp__turnout__endpoint_set", "--output-format", "json"],
              env, work)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["is_error"] is False and res["num_turns"] == 2
    # fake answers 12 words, fake2 3: the answer after the switch came from fake2
    assert len(str(res["result"]).split()) == 3, res["result"]
    req = urllib.request.Request(t.base_url + "/admin/endpoints", headers={"x-api-key": t.token})
    with urllib.request.urlopen(req, timeout=10) as r:
        sessions = json.loads(r.read())["sessions"]
    mine = [s for s in sessions if s["id"] == res["session_id"]]
    assert mine and mine[0]["override"] == "fake2" and mine[0]["endpoint"] == "fake2", sessions
    log = t.log_text()
    assert '"event":"endpoint_set"' in log.replace('": "', '":"') and t.token not in log

    out = run([*turnout, "claude", "remove"], setup_env, work)
    assert out.returncode == 0, out.stderr
    assert settings.read_bytes() == before_settings
    after_cj = json.loads(cj.read_text())  # Claude Code keeps its own state here
    assert "mcpServers" not in after_cj and after_cj["hasCompletedOnboarding"] is True
    assert after_cj["projects"][str(work)]["hasTrustDialogAccepted"] is True
    assert set(before_cj) <= set(after_cj)
