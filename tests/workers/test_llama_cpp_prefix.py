"""The llama_cpp backend's prefix states (workers/kv_cache.py through workers/llama_cpp.py)
on the tiny random-weight GGUF: what sessions share is computed once, across sessions,
subagents, a new worker and a restart; answers do not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import StubCtx

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Message, TextPart, Tool
from turnout.workers import kv_cache as kv
from turnout.workers.base import WorkerSpec
from turnout.workers.llama_cpp import LlamaBackend, create

STABLE = "You are a coding agent. " + " ".join(f"Rule {i}: be exact." for i in range(40))
ENV = "# Environment\nYou have been invoked in the following environment:\n - Primary working directory: /p\n" \
      " - You are powered by the model tiny."
TOOLS = [Tool("Bash", "Runs a shell command. " * 8, {"type": "object", "properties": {"command": {"type": "string"}}}),
         Tool("Read", "Reads a file. " * 8, {"type": "object", "properties": {"path": {"type": "string"}}})]
AGENTS = "Available agent types: general, explore, plan."


def backend(path: Path | str, kv_dir: Path, **options: Any) -> LlamaBackend:
    options.setdefault("seed", 7)
    options.setdefault("prefix_min_tokens", 32)
    spec = WorkerSpec(id="w1", backend="llama_cpp", model="tiny", runtime_dir="/tmp", gateway_ids=[],
                      path=str(path), options={"kv_dir": str(kv_dir), **options})
    b = create(spec)
    b.load()
    return b


def session(session_hash: str, words: str, *, agents: bool = True) -> ChatRequest:
    """A Claude Code-shaped first request: billing header, stable system text with an
    environment section, tools, an agent list entry after the user's words."""
    msgs = [Message("user", [TextPart(words)])]
    if agents:
        msgs.append(Message("system", [TextPart(AGENTS)]))
    return ChatRequest(
        model="tiny", max_tokens=12, temperature=0.0, tools=TOOLS, messages=msgs,
        system=[TextPart(f"x-anthropic-billing-header: cc_version=2.1.197.{session_hash}; cc_entrypoint=sdk-cli;"),
                TextPart(STABLE + "\n\n" + ENV + "\n\n# Context\nKeep going.")])


def run(b: LlamaBackend, req: ChatRequest) -> tuple[m.Started, str]:
    out = list(b.generate("r", req, StubCtx()))
    assert isinstance(out[0], m.Started) and isinstance(out[-1], m.Done)
    return out[0], "".join(x.text for x in out if isinstance(x, m.TextDelta))


def shared(b: LlamaBackend, req: ChatRequest) -> list[int]:
    from turnout.protocol import prompt_prefix as pp

    p = pp.plan(req)
    tokens = np.asarray(b._tokenize(b._render(p.request, shaped=True).prompt), dtype=np.intc)
    return b._shared_prefixes(p, tokens)


def test_a_new_session_starts_from_the_shared_prefix(tiny_gguf: Path, tmp_path: Path) -> None:
    b = backend(tiny_gguf, tmp_path)
    first, second = session("1c0", "say hello"), session("c40", "run echo hi")
    _, agents_end = shared(b, second)
    run(b, first)
    started, text = run(b, second)
    n = b.count_tokens(second)
    assert agents_end <= started.cache_read_input_tokens < n  # all it shares with the first session
    assert started.input_tokens + started.cache_read_input_tokens == n
    cold = backend(tiny_gguf, tmp_path / "cold", kv_disk_mb=0, cache_capacity_mb=0)
    assert run(cold, second) == (m.Started("r", 0, n, 0), text)  # the same answer as a cold prefill


def test_a_subagent_with_the_same_tools_starts_after_them(tiny_gguf: Path, tmp_path: Path) -> None:
    b = backend(tiny_gguf, tmp_path)
    run(b, session("1c0", "say hello"))
    run(b, ChatRequest(model="tiny", max_tokens=4, messages=[Message("user", [TextPart("unrelated " * 30)])]))
    sub = session("9ab", "Find the config loader and report its path.", agents=False)
    tools_end, = shared(b, sub)
    started, _ = run(b, sub)
    assert started.cache_read_input_tokens == tools_end  # from the state saved at the end of the tools


def test_a_new_worker_loads_the_shared_prefix_from_disk(tiny_gguf: Path, tmp_path: Path) -> None:
    b1 = backend(tiny_gguf, tmp_path)
    run(b1, session("1c0", "say hello"))
    assert b1.disk is not None
    b1.disk.flush()
    assert len(list(tmp_path.glob("*/*.kvstate"))) == 2  # end of the tools; end of the agent list
    second = session("c40", "run echo hi")
    b2 = backend(tiny_gguf, tmp_path)  # a restart, or another worker of the model
    _, agents_end = shared(b2, second)
    started, text = run(b2, second)
    assert started.cache_read_input_tokens == agents_end
    cold = backend(tiny_gguf, tmp_path / "cold", kv_disk_mb=0, cache_capacity_mb=0)
    assert run(cold, second)[1] == text


def test_a_state_from_another_llama_cpp_build_is_never_loaded(tiny_gguf: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    b1 = backend(tiny_gguf, tmp_path)
    run(b1, session("1c0", "say hello"))
    assert b1.disk is not None
    b1.disk.flush()
    saved = sorted(tmp_path.glob("*/*.kvstate"))
    assert saved and all(b1.disk.identity["build"].encode() in p.read_bytes()[:1000] for p in saved)
    monkeypatch.setattr(kv, "llama_build_id", lambda: "another-build")
    b2 = backend(tiny_gguf, tmp_path)
    started, _ = run(b2, session("c40", "run echo hi"))
    assert started.cache_read_input_tokens == 0
    # Discarded: the files now there are the new build's own.
    for p in saved:
        assert b"another-build" in p.read_bytes()[:1000] if p.exists() else True
    assert b2.disk is not None and b2.disk.discarded >= 1


def test_another_model_file_never_sees_the_states(tiny_gguf: Path, tmp_path: Path) -> None:
    from tiny_gguf import write_tiny_gguf

    b1 = backend(tiny_gguf, tmp_path)
    run(b1, session("1c0", "say hello"))
    assert b1.disk is not None
    b1.disk.flush()
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    b2 = backend(other, tmp_path)
    assert b2.disk is not None and b2.disk.dir != b1.disk.dir
    started, _ = run(b2, session("c40", "run echo hi"))
    assert started.cache_read_input_tokens == 0


def test_the_longest_common_prefix_of_two_prompts_is_kept(tiny_gguf: Path, tmp_path: Path) -> None:
    """No system text or tools to probe: the second prompt that shares a long start
    with the first saves the state where they part, and a third one starts there."""
    b = backend(tiny_gguf, tmp_path, kv_disk_mb=0)
    common = "Shared notes. " + " ".join(f"item{i} is here." for i in range(60))

    def ask(tail: str) -> ChatRequest:
        return ChatRequest(model="tiny", max_tokens=4, temperature=0.0,
                           messages=[Message("user", [TextPart(common + tail)])])

    run(b, ask(" First question about one?"))
    run(b, ask(" Second question about two?"))
    run(b, ChatRequest(model="tiny", max_tokens=4, messages=[Message("user", [TextPart("zz " * 40)])]))
    started, _ = run(b, ask(" Third question about three?"))
    a = b._tokenize(b._render(ask(" First question about one?")).prompt)
    c = b._tokenize(b._render(ask(" Third question about three?")).prompt)
    lcp = kv.common_prefix(np.asarray(a), np.asarray(c))
    assert started.cache_read_input_tokens >= lcp - 2 > 200


def test_no_disk_budget_writes_nothing(tiny_gguf: Path, tmp_path: Path) -> None:
    b = backend(tiny_gguf, tmp_path, kv_disk_mb=0)
    run(b, session("1c0", "say hello"))
    started, _ = run(b, session("c40", "run echo hi"))
    assert started.cache_read_input_tokens > 0  # RAM still serves
    assert b.disk is None and not list(tmp_path.glob("**/*.kvstate"))


# ---------------------------------------------------------------- real default model


@pytest.mark.slow
def test_default_model_restored_states_answer_as_a_cold_prefill(default_model: Path, tmp_path: Path) -> None:
    """Gemma 3 (sliding-window layers) on two real Claude Code sessions, trimmed to
    three tools: the second session starts from the first's shared prefix, a new
    worker from the disk; greedy answers are those of a cold prefill."""
    from conftest import claude_code_request

    def trimmed(name: str) -> ChatRequest:
        req = claude_code_request(name)
        req.tools = [t for t in req.tools if t.name in ("Bash", "Read", "Edit")]
        req.max_tokens, req.temperature = 24, 0.0
        return req

    first, second = trimmed("01-print-hello-request-2.json"), trimmed("03-tool-bash-request-2.json")
    b1 = backend("", tmp_path, n_ctx=8192, prefix_min_tokens=256)
    run(b1, first)
    warm, text = run(b1, second)
    n = b1.count_tokens(second)
    assert warm.cache_read_input_tokens >= n - 40  # all but its own words and the turn's end
    assert b1.disk is not None
    b1.disk.flush()
    b2 = backend("", tmp_path, n_ctx=8192, prefix_min_tokens=256)
    from_disk, text2 = run(b2, second)
    assert from_disk.cache_read_input_tokens >= n - 600  # the shared prefix: tools and agent list
    cold = backend("", tmp_path / "cold", n_ctx=8192, kv_disk_mb=0, cache_capacity_mb=0)
    assert run(cold, second)[1] == text == text2
