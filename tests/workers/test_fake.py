"""The fake backend, driven in-process (no sockets)."""

from __future__ import annotations

import pytest

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Message, TextPart, ThinkingConfig
from turnout.workers.base import BackendError, ModelLoadError, Pause, WorkerSpec
from turnout.workers.fake import FakeBackend, reference_tokens


def backend(**opts: object) -> FakeBackend:
    return FakeBackend(WorkerSpec(id="f", backend="fake", model="fake", runtime_dir="/tmp", gateway_ids=[], options=opts))


def req(text: str, n: int = 5, **kw: object) -> ChatRequest:
    return ChatRequest(model="fake", max_tokens=n, messages=[Message("user", [TextPart(text)])], **kw)  # type: ignore[arg-type]


def run(b: FakeBackend, r: ChatRequest) -> list[object]:
    return [x for x in b.generate("r", r, None) if not isinstance(x, Pause)]  # type: ignore[arg-type]


def test_cycles_words_and_counts_by_whitespace() -> None:
    out = run(backend(), req("a bb ccc", 7))
    texts = [x.text for x in out if isinstance(x, m.TextDelta)]
    assert texts == reference_tokens("a bb ccc", 7) == ["a", " bb", " ccc", " a", " bb", " ccc", " a"]
    done = out[-1]
    assert isinstance(done, m.Done) and done.stop_reason == "max_tokens"
    assert done.usage.input_tokens == 3 and done.usage.output_tokens == 7


def test_reply_tokens_ends_turn() -> None:
    done = run(backend(reply_tokens=2), req("x", 50))[-1]
    assert isinstance(done, m.Done) and done.stop_reason == "end_turn" and done.usage.output_tokens == 2


def test_delay_yields_pauses() -> None:
    items = list(backend(token_delay_ms=1).generate("r", req("x", 3), None))  # type: ignore[arg-type]
    assert sum(isinstance(i, Pause) for i in items) >= 1


def test_tool_directive() -> None:
    out = run(backend(), req('go [[tool:Bash {"command": "ls"}]]'))
    start = next(x for x in out if isinstance(x, m.ToolCallStart))
    args = "".join(x.partial_json for x in out if isinstance(x, m.ToolArgsDelta))
    assert start.name == "Bash" and args == '{"command":"ls"}'
    assert out[-1].stop_reason == "tool_use"  # type: ignore[union-attr]


def test_think_directive_needs_thinking_enabled() -> None:
    on = run(backend(), req("[[think]] x", 1, thinking=ThinkingConfig("enabled", 100)))
    off = run(backend(), req("[[think]] x", 1))
    assert any(isinstance(x, m.ThinkingDelta) and x.signature for x in on)
    assert not any(isinstance(x, m.ThinkingDelta) for x in off)


def test_context_overflow_message() -> None:
    with pytest.raises(BackendError) as ei:
        run(backend(context_window=3), req("one two three four"))
    assert ei.value.kind == "context_overflow"
    assert ei.value.message == "prompt is too long: 4 tokens > 3 maximum"


def test_an_answer_that_fills_the_window_ends_with_model_context_window_exceeded() -> None:
    out = run(backend(context_window=10), req("one two three four", 100))
    assert out[-1].stop_reason == "model_context_window_exceeded"  # type: ignore[union-attr]
    assert out[-1].usage.output_tokens == 6  # type: ignore[union-attr]
    assert run(backend(context_window=10), req("one two three four", 6))[-1].stop_reason == "max_tokens"  # type: ignore[union-attr]


def test_unknown_option_fails_load() -> None:
    with pytest.raises(ModelLoadError, match="tokn_delay"):
        backend(tokn_delay=1)


def test_answer_stops_where_the_window_ends() -> None:
    """A huge max_tokens is bounded by the window, as with a real model (issue 14)."""
    out = run(backend(context_window=10), req("a b c", 100))
    done = out[-1]
    assert isinstance(done, m.Done) and done.stop_reason == "model_context_window_exceeded"
    assert done.usage.output_tokens == 7 == sum(isinstance(x, m.TextDelta) for x in out)
