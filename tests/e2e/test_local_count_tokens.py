"""``/v1/messages/count_tokens`` through a real turnout answers with the local
model's own tokenizer (llama.cpp worker, tiny random GGUF)."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
from tiny_gguf import write_tiny_gguf

from turnout.gateway.anthropic import parse_count_tokens
from turnout.supervisor.launch import TurnoutProcess
from turnout.workers.base import WorkerSpec
from turnout.workers.llama_cpp import LlamaBackend


def post(t: TurnoutProcess, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(t.base_url + path, data=json.dumps(body).encode(), headers={
        "x-api-key": t.token, "content-type": "application/json", "anthropic-version": "2023-06-01"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_count_tokens_uses_the_local_models_tokenizer(tmp_path: Path,
                                                      turnout_factory: Callable[..., TurnoutProcess]) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    t = turnout_factory(f"""
[server]
worker_wait_s = 30.0

[[models]]
name = "tiny"
backend = "llama_cpp"
path = "{gguf}"
aliases = ["claude-*"]
""")
    body = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "You are a careful assistant."}],
        "messages": [{"role": "user", "content": "héllo wörld, count me with the real tokenizer"}],
        "tools": [{"name": "Bash", "description": "Run a command",
                   "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
    }
    n = post(t, "/v1/messages/count_tokens", body)["input_tokens"]
    # The same count computed in this process with the same GGUF's tokenizer.
    b = LlamaBackend(WorkerSpec(id="x", backend="llama_cpp", model="tiny", runtime_dir="/tmp",
                                gateway_ids=[], path=str(gguf)))
    b.load()
    expected = b.count_tokens(parse_count_tokens(json.dumps(body).encode()))
    assert n == expected
    words = len(" ".join([body["system"][0]["text"], body["messages"][0]["content"]]).split())
    assert n > 3 * words  # the tools' text and the template count too, in model tokens
