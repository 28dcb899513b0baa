"""The path the README gives a new user, with nothing configured: ``turnout up``
with no config file serving the bundled default model (a base model), then the
real ``claude -p "say hello"`` by hand (two environment variables) and after
``turnout claude setup`` (a temporary HOME). No stop strings, no output cap, no
test option: the answer must end by itself, as a real text answer.

The walk is bench/plain_path.py's (which also times it); here it is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.bench.plain_path import assembled_cache, walk

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assembled_cache(tmp_path_factory.mktemp("turnout-cache"))


@pytest.mark.parametrize("path", ["by hand", "after setup"])
def test_claude_says_hello_on_the_plain_path(cache: Path, path: str) -> None:
    w = walk(path, cache)
    print(f"{path}: {w.wall_s} s, exit {w.returncode}\nresult: {w.result}\ncalls: {w.calls}\n"
          f"setup: {w.setup_output}\nstderr: {w.stderr}")
    assert w.returncode == 0, w.stderr
    assert w.result["is_error"] is False and w.result["subtype"] == "success", w.result
    assert str(w.result["result"]).strip(), w.result  # a real text answer
    # One API call answers it (a retry or a "resume" would be a second or third).
    assert 1 <= len(w.calls) <= 2, w.calls
    assert all(c["status"] == 200 and c["error"] is None for c in w.calls), w.calls
    last = w.calls[-1]
    assert last["stop_reason"] == "end_turn", last  # ended by itself: not max_tokens, not the window
    # Claude Code's real prompt: every default tool (a line each for a base model)
    assert last["tools"] >= 15 and last["prompt_tokens"] > 3000
    assert last["output_tokens"] < 200
    assert w.result["result"].strip() == last["text"].strip()
    if path == "after setup":
        env = w.settings_env
        assert env["ANTHROPIC_AUTH_TOKEN"] == "<token>" and env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "gemma3-270m"
        assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "4096" and env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "32768"
        assert last["max_tokens"] == 4096 and last["model"] == "gemma3-270m"  # Claude Code honoured them
    assert w.leftovers == []
