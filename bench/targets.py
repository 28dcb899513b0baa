"""What a benchmark talks to: a turnout endpoint (by model name), an
OpenAI-compatible server (a peer such as llama_cpp.server, Ollama, vLLM), or
llama-cpp-python called in-process (the floor for local inference).

Every target answers ``run(request)`` with a :class:`StreamResult` measured the same
way: time to the first output token, total time, tokens out.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from turnout.bench.prompts import BenchRequest

_dec = msgspec.json.Decoder()
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")


def _json_or_none(data: bytes) -> Any:
    """A data payload that is not JSON (a server bug) still counts as one token."""
    try:
        return _dec.decode(data)
    except msgspec.DecodeError:
        return None


@dataclass
class StreamResult:
    ttft_s: float | None
    total_s: float
    output_tokens: int
    input_tokens: int = 0
    cache_read_tokens: int = 0
    text: str = ""
    error: str = ""

    @property
    def decode_tps(self) -> float | None:
        """Tokens per second after the first one."""
        if self.ttft_s is None or self.output_tokens < 2 or self.total_s <= self.ttft_s:
            return None
        return (self.output_tokens - 1) / (self.total_s - self.ttft_s)


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[bytes, bytes]]:
    """(event, data) pairs of a server-sent-event stream; event is b"" when unnamed."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while True:
            mt = _EVENT_END.search(buf)  # servers end events with \n\n or \r\n\r\n
            if mt is None:
                break
            raw, buf = buf[: mt.start()], buf[mt.end():]
            ev, data_lines = b"", []
            for line in _LINE_END.split(raw):
                if line.startswith(b"event: "):
                    ev = line[7:]
                elif line.startswith(b"data: "):
                    data_lines.append(line[6:])
            if data_lines:  # an event of comments only (": ping") dispatches nothing
                yield ev, b"\n".join(data_lines)  # multi-line data joins with \n (SSE spec)


class Target:
    """Options: name (shown in reports), context_window (0: unknown)."""

    kind = "base"

    def __init__(self, name: str, context_window: int = 0) -> None:
        self.name = name
        self.context_window = context_window

    async def run(self, req: BenchRequest, cancel_after: int | None = None) -> StreamResult:
        raise NotImplementedError

    async def count_tokens(self, req: BenchRequest) -> int | None:
        return None

    async def close(self) -> None:
        pass


class TurnoutTarget(Target):
    """A model served by turnout, through ``POST /v1/messages`` (stream)."""

    kind = "turnout"

    def __init__(self, name: str, base_url: str, token: str, model: str, context_window: int = 0) -> None:
        super().__init__(name, context_window)
        self.url = base_url.rstrip("/")
        self.model = model
        self.headers = {"x-api-key": token, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800))

    async def run(self, req: BenchRequest, cancel_after: int | None = None) -> StreamResult:
        t0 = time.perf_counter()
        ttft: float | None = None
        n, text, usage_in, cache_read = 0, [], 0, 0
        async with self.session.post(self.url + "/v1/messages", data=json.dumps(req.body(self.model)),
                                     headers=self.headers) as resp:
            if resp.status != 200:
                body = await resp.text()
                return StreamResult(None, time.perf_counter() - t0, 0, error=f"HTTP {resp.status}: {body[:300]}")
            async for ev, data in sse_events(resp):
                if ev == b"content_block_delta":
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    n += 1
                    d = _dec.decode(data)["delta"]
                    text.append(d.get("text") or d.get("partial_json") or "")
                    if cancel_after is not None and n >= cancel_after:
                        resp.close()  # the client goes away mid-stream
                        break
                elif ev == b"message_start":
                    u = _dec.decode(data)["message"]["usage"]
                    usage_in, cache_read = u.get("input_tokens", 0), u.get("cache_read_input_tokens", 0)
                elif ev == b"message_delta":
                    n = max(n, _dec.decode(data)["usage"].get("output_tokens", n))
                elif ev == b"error":
                    return StreamResult(ttft, time.perf_counter() - t0, n, error=data.decode()[:300])
                elif ev == b"message_stop":
                    break
        return StreamResult(ttft, time.perf_counter() - t0, n, usage_in, cache_read, "".join(text))

    async def count_tokens(self, req: BenchRequest) -> int | None:
        body = req.body(self.model)
        for k in ("max_tokens", "stream", "temperature"):
            body.pop(k, None)
        async with self.session.post(self.url + "/v1/messages/count_tokens", data=json.dumps(body),
                                     headers=self.headers) as resp:
            if resp.status != 200:
                return None
            return int((await resp.json())["input_tokens"])

    async def close(self) -> None:
        await self.session.close()


class _OpenAIStreaming(Target):
    """Shared by the OpenAI-shaped peers: POST a streaming body, count one token
    per data event that carries text (``piece_of`` extracts it)."""

    def __init__(self, name: str, base_url: str, api_key: str, context_window: int) -> None:
        super().__init__(name, context_window)
        self.url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800))

    async def _stream(self, path: str, body: dict[str, Any], piece_of: Any, cancel_after: int | None) -> StreamResult:
        t0 = time.perf_counter()
        ttft: float | None = None
        n, text = 0, []
        async with self.session.post(self.url + path, data=json.dumps(body), headers=self.headers) as resp:
            if resp.status != 200:
                return StreamResult(None, time.perf_counter() - t0, 0, error=f"HTTP {resp.status}: {(await resp.text())[:300]}")
            async for _ev, data in sse_events(resp):
                if data == b"[DONE]":
                    break
                event = _json_or_none(data)
                piece = piece_of(event) if event is not None else "\ufffd"
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    n += 1
                    text.append(piece)
                    if cancel_after is not None and n >= cancel_after:
                        resp.close()
                        break
        return StreamResult(ttft, time.perf_counter() - t0, n, text="".join(text))

    async def close(self) -> None:
        await self.session.close()


def _completion_piece(event: Any) -> str:
    choices = event.get("choices") or []
    return str(choices[0].get("text") or "") if choices else ""


def _chat_piece(event: Any) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    d = choices[0].get("delta") or {}
    piece = d.get("content") or d.get("reasoning_content") or ""
    for tc in d.get("tool_calls") or []:
        piece += (tc.get("function") or {}).get("arguments") or ""
    return str(piece)


class CompletionsTarget(_OpenAIStreaming):
    """An OpenAI-compatible server fed the exact prompt text turnout's template
    renders, through ``/v1/completions`` (so the comparison is like for like)."""

    kind = "openai_completions"

    def __init__(self, name: str, base_url: str, model: str, render: Any, api_key: str = "none",
                 context_window: int = 0) -> None:
        super().__init__(name, base_url, api_key, context_window)
        self.model = model
        self.render = render  # BenchRequest -> prompt text

    async def run(self, req: BenchRequest, cancel_after: int | None = None) -> StreamResult:
        body = {"model": self.model, "prompt": self.render(req), "max_tokens": req.max_tokens,
                "stream": True, "temperature": 0}
        return await self._stream("/v1/completions", body, _completion_piece, cancel_after)


class InProcessLlamaTarget(Target):
    """llama-cpp-python in this process, on the prompt turnout's template renders:
    the floor any server of the same model can reach."""

    kind = "inprocess"

    def __init__(self, name: str, backend: Any) -> None:
        super().__init__(name, int(getattr(backend, "context_window", 0)))
        self.backend = backend  # a loaded workers.llama_cpp.LlamaBackend (template, tokenizer, Llama)
        self.lock = threading.Lock()

    def render(self, req: BenchRequest) -> str:
        from turnout.gateway.anthropic import parse_messages

        chat = parse_messages(json.dumps(req.body("x")).encode(), {})
        return str(self.backend._render(chat).prompt)

    def _run_sync(self, req: BenchRequest, cancel_after: int | None) -> StreamResult:
        with self.lock:
            prompt = self.render(req)
            tokens = self.backend._tokenize(prompt)
            t0 = time.perf_counter()
            ttft: float | None = None
            n, text = 0, []
            it = self.backend.llm.create_completion(tokens, max_tokens=req.max_tokens, stream=True, temperature=0)
            for chunk in it:
                piece = chunk["choices"][0]["text"]
                if ttft is None:
                    ttft = time.perf_counter() - t0
                n += 1
                text.append(piece)
                if cancel_after is not None and n >= cancel_after:
                    it.close()
                    break
            return StreamResult(ttft, time.perf_counter() - t0, n, len(tokens), text="".join(text))

    async def run(self, req: BenchRequest, cancel_after: int | None = None) -> StreamResult:
        return await asyncio.to_thread(self._run_sync, req, cancel_after)

    async def count_tokens(self, req: BenchRequest) -> int | None:
        return len(self.backend._tokenize(self.render(req)))


def to_openai_chat(req: BenchRequest, model: str) -> dict[str, Any]:
    """The same conversation in OpenAI Chat Completions' shape."""
    msgs: list[dict[str, Any]] = []
    if req.system:
        msgs.append({"role": "system", "content": "\n".join(b["text"] for b in req.system)})
    for m in req.messages:
        c = m["content"]
        if isinstance(c, str):
            msgs.append({"role": m["role"], "content": c})
            continue
        texts = [b["text"] for b in c if b["type"] == "text"]
        calls = [b for b in c if b["type"] == "tool_use"]
        results = [b for b in c if b["type"] == "tool_result"]
        for r in results:
            msgs.append({"role": "tool", "tool_call_id": r["tool_use_id"], "content": r["content"]})
        if m["role"] == "assistant":
            out: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) or None}
            if calls:
                out["tool_calls"] = [{"id": b["id"], "type": "function",
                                      "function": {"name": b["name"], "arguments": json.dumps(b["input"])}} for b in calls]
            msgs.append(out)
        elif texts:
            msgs.append({"role": "user", "content": "\n".join(texts)})
    body: dict[str, Any] = {"model": model, "messages": msgs, "max_tokens": req.max_tokens, "stream": True,
                            "temperature": 0}
    if req.tools:
        body["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                           "parameters": t.get("input_schema", {})}} for t in req.tools]
    return body


class ChatTarget(_OpenAIStreaming):
    """Any OpenAI-compatible server (Ollama, LM Studio, vLLM, llama-server) through
    ``/v1/chat/completions`` with its own chat template."""

    kind = "openai_chat"

    def __init__(self, name: str, base_url: str, model: str, api_key: str = "none", context_window: int = 0) -> None:
        super().__init__(name, base_url, api_key, context_window)
        self.model = model

    async def run(self, req: BenchRequest, cancel_after: int | None = None) -> StreamResult:
        return await self._stream("/v1/chat/completions", to_openai_chat(req, self.model), _chat_piece, cancel_after)
