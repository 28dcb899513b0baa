"""llama.cpp's chat parser cases (tests/fixtures/chat-formats/README.md), loaded once."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TEMPLATES = FIXTURES / "chat-templates"
CASES = FIXTURES / "chat-formats" / "cases.jsonl"


@functools.cache
def cases() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]


@functools.cache
def template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def case_id(case: dict[str, Any]) -> str:
    return f"{case['id']}-{case['template'].removesuffix('.jinja')}"
