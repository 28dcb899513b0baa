"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Real requests Claude Code 2.1.197 sent (from ../shared/fixtures/claude-code; see its README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude-code"


def poll_until(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``fn`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def tool_bin(name: str, what: str) -> str:
    """A CLI that ./run tests installs in .tools/ with npm; missing fails under CI."""
    found = shutil.which(name) or str(ROOT / ".tools/node_modules/.bin" / name)
    if not os.path.exists(found):
        if os.environ.get("CI"):
            pytest.fail(f"the {what} is missing: ./run tests installs it with npm")
        pytest.skip(f"{what} not installed (./run tests installs it)")
    return found


def claude_bin() -> str:
    return tool_bin("claude", "Claude Code CLI")
