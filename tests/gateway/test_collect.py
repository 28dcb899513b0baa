"""Folding a stream into a whole answer (gateway/collect.py)."""

from __future__ import annotations

import asyncio

import pytest

from turnout.gateway.collect import AnthropicMessage, Collected, collect
from turnout.gateway.errors import ApiError
from turnout.protocol import messages as m
from turnout.protocol.chat import TextPart, ThinkingPart, ToolUsePart


class Flood:
    """A Source that always has a batch ready: ``next_batch`` never suspends."""

    done = False

    def __init__(self) -> None:
        self.cancelled = False

    async def next_batch(self) -> list[m.StreamMsg]:
        return [m.TextDelta("r", 0, text="x" * 1000) for _ in range(100)]

    def cancel(self) -> None:
        self.cancelled = True


async def test_an_answer_past_the_bound_is_stopped_and_the_loop_keeps_turning() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    src = Flood()
    with pytest.raises(ApiError) as ei:
        await collect(src, max_bytes=2 * 2**20)
    task.cancel()
    assert ei.value.status == 400 and "server.max_response_mb" in ei.value.message
    assert src.cancelled
    assert ticks >= 10  # one turn of the loop per batch: others ran meanwhile


def test_parts_are_joined_in_order() -> None:
    c = Collected()
    for msg in [m.Started("r", 0, input_tokens=3), m.ThinkingDelta("r", 1, text="hm"), m.ThinkingDelta("r", 2, text="m", signature="s"),
                m.TextDelta("r", 3, text="a"), m.TextDelta("r", 4, text="b"),
                m.ToolCallStart("r", 5, index=0, id="t1", name="f"), m.ToolArgsDelta("r", 6, index=0, partial_json='{"x"'),
                m.ToolArgsDelta("r", 7, index=0, partial_json=": 1}"), m.TextDelta("r", 8, text="c"),
                m.Done("r", 9, "tool_use", m.Usage(3, 5))]:
        c.add(msg)
    assert c.parts == [ThinkingPart("hmm", "s"), TextPart("ab"), ToolUsePart("t1", "f", {"x": 1}), TextPart("c")]
    assert c.size == len("hmmsab") + len('{"x": 1}') + 1


def test_anthropic_upstream_text_is_joined_at_block_stop() -> None:
    a = AnthropicMessage()
    a.feed("message_start", b'{"type":"message_start","message":{"id":"m","content":[],"usage":{}}}')
    a.feed("content_block_start", b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}')
    for w in ("a", "b", "c"):
        a.feed("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"%s"}}' % w.encode())
    a.feed("content_block_stop", b'{"type":"content_block_stop","index":0}')
    assert a.message is not None and a.message["content"] == [{"type": "text", "text": "abc"}]
