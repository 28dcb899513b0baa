"""A short `turnout bench` end to end: the fake backend and a tiny random GGUF
through turnout, beside llama-cpp-python in-process and llama_cpp.server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workers.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.slow  # llama_cpp.server and in-process llama.cpp peers


def test_short_bench_against_fake_and_tiny_gguf(tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=2048)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[[models]]
name = "fake"
backend = "fake"
[models.options]
context_window = 100000
token_delay_ms = 1

[[models]]
name = "tiny"
backend = "llama_cpp"
path = "{gguf}"
""")
    out = tmp_path / "results"
    env = {**os.environ, "TURNOUT_TOKEN": "bench-test-token-123"}
    proc = subprocess.run(
        [sys.executable, "-m", "turnout.cli", "bench", "--start", str(cfg), "--runs", "2",
         "--workloads", "single_2k,multi_20k_tools,cancel,concurrency", "--size", "single_2k=300",
         "--concurrency", "1,4", "--max-tokens", "8", "--peer", "inprocess", "--peer", "llama-server",
         "--model-path", str(gguf), "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    names = [t["name"] for t in doc["targets"]]
    assert names == ["turnout:fake", "turnout:tiny", "llama-cpp-python in-process", "llama_cpp.server"]
    res = doc["results"]
    # 20K does not fit the tiny model's 2048-token window: skipped, never sent
    for n in names[1:]:
        assert res[n]["multi_20k_tools"] == {"skipped": "context_overflow"}, n
    assert res["turnout:fake"]["multi_20k_tools"]["decode_tps"]["n"] >= 2
    for n in names:
        assert res[n]["single_2k"]["ttft_s"]["n"] == 2, (n, res[n]["single_2k"])
        assert res[n]["concurrency"]["4"]["tokens_per_s"]["n"] == 2
    # the prompt really was ~300 tokens of the model's own tokenizer
    assert 200 <= res["turnout:tiny"]["single_2k"]["input_tokens"] <= 400
    md = (out / "bench.md").read_text()
    assert "turnout:tiny (turnout)" in md and "skipped: context_overflow" in md
    for png in ("ttft_2k.png", "decode_20k.png", "concurrency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
