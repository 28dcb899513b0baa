"""The configuration example in the README is a config turnout accepts."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from turnout.protocol.config import load_config, validate
from turnout.workers.llama_cpp import LlamaOptions


def test_readme_example_config_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.findall(r"```toml\n(.*?)```", readme, re.S)[0]
    (tmp_path / "c.toml").write_text(example)
    cfg = load_config(tmp_path / "c.toml")
    assert validate(cfg) == []
    assert [m.name for m in cfg.models if m.backend != "browser"] == ["gemma3-270m"] and cfg.endpoints[0].provider == "gemini"
    msgspec.convert(cfg.models[0].options, LlamaOptions)  # the backend accepts its options too
