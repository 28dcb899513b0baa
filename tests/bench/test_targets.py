"""The SSE reader every benchmark target uses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from turnout.bench.prompts import conversation
from turnout.bench.targets import sse_events, to_openai_chat


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c


class _Resp:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)


def events(chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    async def go() -> list[tuple[bytes, bytes]]:
        return [e async for e in sse_events(_Resp(chunks))]  # type: ignore[arg-type]
    return asyncio.run(go())


def test_crlf_events_split_anywhere() -> None:
    stream = b'data: {"a": 1}\r\n\r\nevent: ping\r\ndata: {}\r\n\r\ndata: [DONE]\r\n\r\n'
    want = [(b"", b'{"a": 1}'), (b"ping", b"{}"), (b"", b"[DONE]")]
    for cut in range(1, len(stream)):
        assert events([stream[:cut], stream[cut:]]) == want, cut


def test_multi_line_data_is_joined() -> None:
    assert events([b"data: a\ndata: b\n\n"]) == [(b"", b"a\nb")]


def test_comment_only_events_are_skipped() -> None:
    # sse-starlette sends ": ping - <date>" every 15 s while a long prompt is processed
    assert events([b": ping - 2026-11-25\r\n\r\ndata: {}\r\n\r\n"]) == [(b"", b"{}")]


def test_lf_events() -> None:
    assert events([b"event: message_stop\ndata: {}\n\n"]) == [(b"message_stop", b"{}")]


def test_openai_chat_conversion_keeps_tool_pairs() -> None:
    body = to_openai_chat(conversation("multi_20k_tools", 3000, seed=1, turns=2), "m")
    calls = [c["id"] for m in body["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    results = [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]
    assert calls == results and len(calls) == 2
    assert body["messages"][0]["role"] == "system" and len(body["tools"]) == 24


def test_chat_target_counts_content_and_tool_argument_chunks() -> None:
    """ChatTarget against a local server that streams OpenAI chat chunks."""
    from aiohttp import web

    from turnout.bench.prompts import single_turn
    from turnout.bench.targets import ChatTarget

    seen: list[dict[str, object]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for delta in ({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"},
                      {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}):
            await resp.write(b'data: {"choices": [{"index": 0, "delta": ' + json.dumps(delta).encode() + b"}]}\r\n\r\n")
        await resp.write(b"data: [DONE]\r\n\r\n")
        return resp

    async def go() -> tuple[object, ...]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        t = ChatTarget("peer", f"http://127.0.0.1:{port}", "m1")
        try:
            return (await t.run(single_turn(50, seed=1, max_tokens=5)),)
        finally:
            await t.close()
            await runner.cleanup()

    (res,) = asyncio.run(go())
    assert res.output_tokens == 3 and res.text == 'Hello{"a":' and res.ttft_s is not None  # type: ignore[attr-defined]
    assert seen[0]["model"] == "m1" and seen[0]["stream"] is True and seen[0]["max_tokens"] == 5
