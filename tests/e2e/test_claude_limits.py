"""`turnout claude ARGS` (run mode: no file touched) gives the real Claude Code CLI
limits fitted to the main model's window, which turnout reads from the running
gateway when the config does not say it, and Claude Code honours them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from turnout.bench.plain_path import Proxy, claude_bin
from turnout.supervisor.launch import TurnoutProcess

pytestmark = pytest.mark.slow  # the real Claude Code CLI

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[[models]]
name = "local"
backend = "fake"
aliases = ["claude-*"]
[models.options]
reply_tokens = 3
context_window = 32768
"""


def test_run_mode_sends_the_fitted_output_limit(turnout_factory: Callable[..., TurnoutProcess], tmp_path: Path) -> None:
    t = turnout_factory(CONFIG)
    proxy = Proxy(t.base_url).start()
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    env = {"PATH": f"{Path(claude_bin()).parent}:{os.environ['PATH']}", "HOME": str(home), "PYTHONPATH": str(ROOT),
           "TURNOUT_TOKEN": t.token, "XDG_STATE_HOME": str(home / ".local/state"),
           "XDG_CONFIG_HOME": str(home / ".config"), "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_TELEMETRY": "1"}
    try:
        out = subprocess.run([sys.executable, "-m", "turnout.cli", "claude", "--config", str(t.config_path),
                              "--url", proxy.url, "-p", "say hi", "--output-format", "json"],
                             env=env, cwd=home / "work", capture_output=True, text=True, timeout=180)
    finally:
        proxy.stop()
    print(out.stdout[-2000:], out.stderr[-2000:])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["is_error"] is False
    (call, *_) = proxy.messages()
    assert call.body["model"] == "local" and call.body["max_tokens"] == 4096  # 32768 // 8, from /v1/models
    assert not (home / ".claude" / "settings.json").exists()  # run mode writes nothing
