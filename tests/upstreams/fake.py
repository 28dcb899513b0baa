"""Local HTTP servers speaking each provider's documented wire format, byte for
byte: Anthropic Messages (SSE with ``event:`` names), OpenAI Chat Completions
(``data:`` chunks and ``data: [DONE]``) and Gemini ``generateContent`` /
``streamGenerateContent?alt=sse`` (``\\r\\n`` framed), with each one's error
bodies, 401 on a wrong key and 429 with ``retry-after``.

What they answer is scripted by the last user text:
    ``[[tool:NAME {json}]]``  call tool NAME with that input
    ``[[think]]``             a thinking block (signature) before the answer
    ``[[slow]]``              200 tokens 10 ms apart (for cancellation)
    ``[[search]]``            (Anthropic) a web search answer first: redacted_thinking,
                              server_tool_use, web_search_tool_result, cited text
    ``[[window]]``            (Anthropic) the answer ends with stop reason
                              ``model_context_window_exceeded``
    anything else             "<provider> heard: <text>" in word chunks
and by ``fail_next[provider]``: statuses to answer the next requests with.

Every request is recorded (provider, path, query, the auth header's verdict,
the JSON body); a client that goes away mid-stream is recorded in ``disconnects``
with CLOCK_MONOTONIC, comparable across processes.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ANTHROPIC_SIG = "EqQBCkYIBxgCKkBSIGlzIGEgc2lnbmF0dXJlIG1hZGUgYnkgdGhlIGZha2UgYW50aHJvcGljIHVwc3RyZWFt" + "A" * 40
GEMINI_SIG = "CiQB4/H/Xfakegeminisignature=="


@dataclass
class Recorded:
    provider: str
    path: str
    query: str
    auth_ok: bool
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeUpstreams:
    """Options: keys: the key each provider expects."""

    keys: dict[str, str] = field(default_factory=lambda: {
        "anthropic": "sk-ant-test-SECRET-0a1b2c3d4e5f", "openai": "sk-test-SECRET-openai-9z8y7x6w",
        "gemini": "AIzaTEST-SECRET-gemini-55aa66bb"})
    requests: list[Recorded] = field(default_factory=list)
    disconnects: list[tuple[str, int]] = field(default_factory=list)
    fail_next: dict[str, list[int]] = field(default_factory=dict)
    last_sse: dict[str, bytes] = field(default_factory=dict)  # the last streamed body, by provider
    token_delay_s: float = 0.0
    port: int = 0

    # ------------------------------------------------------------ life cycle

    def start(self) -> FakeUpstreams:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/anthropic/v1/messages", self.anthropic)
        app.router.add_post("/anthropic/v1/messages/count_tokens", self.anthropic_count)
        app.router.add_post("/openai/v1/chat/completions", self.openai)
        app.router.add_post("/openai/v1/embeddings", self.openai_embeddings)
        app.router.add_post("/gemini/v1beta/models/{model}:{method}", self.gemini)
        app.router.add_get("/_disconnects", self.list_disconnects)
        return app

    async def list_disconnects(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.disconnects)

    # ------------------------------------------------------------- helpers

    async def _record(self, provider: str, request: web.Request, auth_ok: bool) -> dict[str, Any]:
        body = json.loads(await request.read())
        self.requests.append(Recorded(provider, request.path, request.query_string, auth_ok, body,
                                      {k.lower(): v for k, v in request.headers.items()}))
        return body

    def _fail(self, provider: str) -> int | None:
        q = self.fail_next.get(provider)
        return q.pop(0) if q else None

    @staticmethod
    def _words(text: str) -> list[str]:
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    @staticmethod
    def _script(text: str) -> tuple[str, tuple[str, dict[str, Any]] | None, bool, bool]:
        tool = None
        mt = re.search(r"\[\[tool:(\w+) (\{.*?\})\]\]", text)
        if mt:
            tool = (mt.group(1), json.loads(mt.group(2)))
        return text, tool, "[[think]]" in text, "[[slow]]" in text

    async def _stream(self, request: web.Request, resp: web.StreamResponse, chunks: list[bytes], provider: str,
                      delay: float = 0.0) -> web.StreamResponse:
        try:
            for c in chunks:
                await resp.write(c)
                d = delay or self.token_delay_s
                if d:
                    await asyncio.sleep(d)
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects.append((provider, time.monotonic_ns()))
            raise
        return resp

    # ----------------------------------------------------------- Anthropic

    @staticmethod
    def _a_last_text(body: dict[str, Any]) -> str:
        for msg in reversed(body["messages"]):
            if msg["role"] != "user":
                continue
            c = msg["content"]
            if isinstance(c, str):
                return c
            for b in c:
                if b["type"] == "text":
                    return str(b["text"])
                if b["type"] == "tool_result":
                    inner = b["content"]
                    return inner if isinstance(inner, str) else " ".join(x.get("text", "") for x in inner)
        return ""

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("x-api-key") == self.keys["anthropic"]
        body = await self._record("anthropic", request, ok)
        if not ok:
            return web.json_response({"type": "error", "error": {"type": "authentication_error",
                                                                  "message": "invalid x-api-key"}}, status=401)
        st = self._fail("anthropic")
        if st == 429:
            return web.json_response({"type": "error", "error": {"type": "rate_limit_error", "message":
                                      "Number of request tokens has exceeded your per-minute rate limit"}},
                                     status=429, headers={"retry-after": "0"})
        if st:
            return web.json_response({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                                     status=st)
        for msg in body["messages"]:  # as the real API does: a foreign signature is refused
            for b in msg["content"] if isinstance(msg["content"], list) else []:
                if b.get("type") == "thinking" and b.get("signature") != ANTHROPIC_SIG:
                    return web.json_response({"type": "error", "error": {"type": "invalid_request_error",
                                              "message": "messages.1.content.0: Invalid `signature` in `thinking` block"}},
                                             status=400)
        text, tool, think, slow = self._script(self._a_last_text(body))

        def ev(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

        chunks = [ev("message_start", {"type": "message_start", "message": {
            "id": "msg_01FakeUpstream", "type": "message", "role": "assistant", "model": body["model"],
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5,
                      "output_tokens": 1}}})]
        chunks.append(ev("ping", {"type": "ping"}))
        idx = 0
        search = "[[search]]" in text
        if search:  # what a web search answer streams (server tool, its result, cited text)
            chunks += self._anthropic_search(ev)
            idx = 4
        if think:
            chunks.append(ev("content_block_start", {"type": "content_block_start", "index": idx,
                                                     "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
            chunks.append(ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                     "delta": {"type": "thinking_delta", "thinking": "Let me think."}}))
            chunks.append(ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                     "delta": {"type": "signature_delta", "signature": ANTHROPIC_SIG}}))
            chunks.append(ev("content_block_stop", {"type": "content_block_stop", "index": idx}))
            idx += 1
        words = ["tok "] * 200 if slow else self._words(f"anthropic heard: {text}")
        chunks.append(ev("content_block_start", {"type": "content_block_start", "index": idx,
                                                 "content_block": {"type": "text", "text": ""}}))
        chunks += [ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                              "delta": {"type": "text_delta", "text": w}}) for w in words]
        chunks.append(ev("content_block_stop", {"type": "content_block_stop", "index": idx}))
        if tool:
            idx += 1
            args = json.dumps(tool[1])
            chunks.append(ev("content_block_start", {"type": "content_block_start", "index": idx, "content_block": {
                "type": "tool_use", "id": "toolu_01FakeAnthropic" + str(len(self.requests)), "name": tool[0], "input": {}}}))
            for i in range(0, len(args), 7):
                chunks.append(ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                         "delta": {"type": "input_json_delta", "partial_json": args[i:i + 7]}}))
            chunks.append(ev("content_block_stop", {"type": "content_block_stop", "index": idx}))
        usage: dict[str, Any] = {"output_tokens": len(words)}
        if search:
            usage["server_tool_use"] = {"web_search_requests": 1}
        chunks.append(ev("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "tool_use" if tool else "model_context_window_exceeded" if "[[window]]" in text else "end_turn",
            "stop_sequence": None}, "usage": usage}))
        chunks.append(ev("message_stop", {"type": "message_stop"}))
        self.last_sse["anthropic"] = b"".join(chunks)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                                           "request-id": "req_fake"})
        await resp.prepare(request)
        return await self._stream(request, resp, chunks, "anthropic", 0.01 if slow else 0.0)

    @staticmethod
    def count_of(provider: str, body: dict[str, Any]) -> int:
        """What the fake answers a token count with (not the 4-chars estimate)."""
        if provider == "anthropic":
            return 1000 + len(json.dumps(body["messages"])) // 3
        return 2000 + len(json.dumps(body["generateContentRequest"]["contents"])) // 3

    async def anthropic_count(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("x-api-key") == self.keys["anthropic"]
        body = await self._record("anthropic", request, ok)
        if not ok:
            return web.json_response({"type": "error", "error": {"type": "authentication_error",
                                                                  "message": "invalid x-api-key"}}, status=401)
        extra = next((k for k in ("max_tokens", "stream", "temperature", "metadata") if k in body), None)
        if extra:
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error",
                                      "message": f"{extra}: Extra inputs are not permitted"}}, status=400)
        return web.json_response({"input_tokens": self.count_of("anthropic", body)})

    SEARCH_URL = "https://example.com/turnout-news"

    @classmethod
    def _anthropic_search(cls, ev: Any) -> list[bytes]:
        """Blocks 0-2 of a web search answer, as the Messages API streams them:
        redacted_thinking, server_tool_use (input streamed), web_search_tool_result;
        the cited text block follows as block 3."""
        srv = "srvtoolu_01FakeWebSearch"
        out = [ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}}),
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                "type": "server_tool_use", "id": srv, "name": "web_search", "input": {}}})]
        q = json.dumps({"query": "turnout news"})
        out += [ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                                           "delta": {"type": "input_json_delta", "partial_json": q[i:i + 9]}})
                for i in range(0, len(q), 9)]
        out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 1}))
        out.append(ev("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
            "type": "web_search_tool_result", "tool_use_id": srv, "content": [{
                "type": "web_search_result", "title": "Turnout news", "url": cls.SEARCH_URL,
                "encrypted_content": "EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5LTQ1NGUtODgxNC1kNjNjNTk1ZWI3Y2", "page_age": "April 30, 2025"}]}}))
        out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 2}))
        out.append(ev("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
            "type": "text", "text": "", "citations": []}}))
        out.append(ev("content_block_delta", {"type": "content_block_delta", "index": 3, "delta": {
            "type": "citations_delta", "citation": {
                "type": "web_search_result_location", "cited_text": "turnout shipped a gateway", "url": cls.SEARCH_URL,
                "title": "Turnout news", "encrypted_index": "Eo8BCioIAhgBIiQyYjQ0OWJmZi1lNm"}}}))
        out.append(ev("content_block_delta", {"type": "content_block_delta", "index": 3,
                                              "delta": {"type": "text_delta", "text": "Turnout shipped a gateway."}}))
        out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 3}))
        return out

    # -------------------------------------------------------------- OpenAI

    async def openai(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        ok = auth == f"Bearer {self.keys['openai']}"
        body = await self._record("openai", request, ok)
        if not ok:
            # The real API quotes the key it got (masked); this one quotes it whole,
            # so a test proves turnout never relays a 401's words.
            return web.json_response({"error": {"message": f"Incorrect API key provided: {auth[7:]}. You can find your API key at https://platform.openai.com/account/api-keys.",
                                                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}, status=401)
        st = self._fail("openai")
        if st == 429:
            return web.json_response({"error": {"message": "Rate limit reached for requests", "type": "requests",
                                                "param": None, "code": "rate_limit_exceeded"}},
                                     status=429, headers={"retry-after": "0", "x-ratelimit-remaining-requests": "0"})
        if st:
            return web.json_response({"error": {"message": "The server had an error while processing your request.",
                                                "type": "server_error", "param": None, "code": None}}, status=st)
        last = body["messages"][-1]
        c = last.get("content") or ""
        text = c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p.get("type") == "text")
        if last["role"] == "tool":
            text = str(c)
        text, tool, _think, slow = self._script(text)
        cid = "chatcmpl-FakeUpstream"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return b"data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": 1764000000,
                                           "model": body["model"], "system_fingerprint": "fp_fake",
                                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish}]}, separators=(",", ":")).encode() + b"\n\n"

        words = ["tok "] * 200 if slow else self._words(f"openai heard: {text}")
        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        chunks += [chunk({"content": w}) for w in words]
        if tool:
            args = json.dumps(tool[1])
            chunks.append(chunk({"tool_calls": [{"index": 0, "id": "call_FakeOpenAI" + str(len(self.requests)), "type": "function",
                                                 "function": {"name": tool[0], "arguments": ""}}]}))
            chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 5]}}]})
                       for i in range(0, len(args), 5)]
        chunks.append(chunk({}, "tool_calls" if tool else "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(b"data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": 1764000000,
                                                  "model": body["model"], "choices": [], "usage": {
                "prompt_tokens": 30, "completion_tokens": len(words), "total_tokens": 30 + len(words),
                "prompt_tokens_details": {"cached_tokens": 10}}}, separators=(",", ":")).encode() + b"\n\n")
        chunks.append(b"data: [DONE]\n\n")
        # api.openai.com sits behind Cloudflare, which sets a bot-management cookie.
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Set-Cookie": f"__cf_bm=fake{len(self.requests)}; path=/; HttpOnly; SameSite=None"})
        await resp.prepare(request)
        return await self._stream(request, resp, chunks, "openai", 0.01 if slow else 0.0)

    @staticmethod
    def vector_of(text: str, dims: int = 8) -> list[float]:
        """The fake providers' embedding of ``text``: deterministic, unit length."""
        import hashlib

        h = hashlib.sha256(text.encode()).digest()
        v = [b - 127.5 for b in h[:dims]]
        n = sum(x * x for x in v) ** 0.5
        return [round(x / n, 6) for x in v]

    async def openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("Authorization", "") == f"Bearer {self.keys['openai']}"
        body = await self._record("openai", request, ok)
        if not ok:
            return web.json_response({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                                "param": None, "code": "invalid_api_key"}}, status=401)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [{"object": "embedding", "index": i, "embedding": self.vector_of(t)} for i, t in enumerate(texts)]
        n = sum(len(t.split()) for t in texts)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": n, "total_tokens": n}})

    # -------------------------------------------------------------- Gemini

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("x-goog-api-key") == self.keys["gemini"]
        body = await self._record("gemini", request, ok)
        method = request.match_info["method"]
        if not ok:
            return web.json_response({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                                                "status": "INVALID_ARGUMENT"}}, status=401)
        st = self._fail("gemini")
        if st == 429:
            return web.json_response({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                                                "status": "RESOURCE_EXHAUSTED", "details": [
                                                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"}]}},
                                     status=429)
        if st:
            return web.json_response({"error": {"code": st, "message": "The model is overloaded. Please try again later.",
                                                "status": "UNAVAILABLE"}}, status=st)
        if method == "batchEmbedContents":
            return web.json_response({"embeddings": [
                {"values": self.vector_of(r["content"]["parts"][0]["text"])} for r in body["requests"]]})
        if method == "countTokens":
            if "generateContentRequest" not in body:
                return web.json_response({"error": {"code": 400, "message": "* CountTokensRequest: contents is required",
                                                    "status": "INVALID_ARGUMENT"}}, status=400)
            return web.json_response({"totalTokens": self.count_of("gemini", body),
                                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1}]})
        bad = _gemini_schema_problem(body)
        if bad:
            return web.json_response({"error": {"code": 400, "message": f"Invalid JSON payload received. Unknown name \"{bad}\"",
                                                "status": "INVALID_ARGUMENT"}}, status=400)
        last = body["contents"][-1]
        text = ""
        for p in last["parts"]:
            if "text" in p:
                text = p["text"]
            elif "functionResponse" in p:
                text = json.dumps(p["functionResponse"]["response"])
        text, tool, think, slow = self._script(text)
        words = ["tok "] * 200 if slow else self._words(f"gemini heard: {text}")
        parts: list[list[dict[str, Any]]] = []
        if think:
            parts.append([{"text": "Pondering.", "thought": True}])
        parts += [[{"text": w}] for w in words]
        if tool:
            parts.append([{"functionCall": {"name": tool[0], "args": tool[1]}, "thoughtSignature": GEMINI_SIG}])
        usage = {"promptTokenCount": 40, "candidatesTokenCount": len(words), "totalTokenCount": 40 + len(words),
                 "thoughtsTokenCount": 3 if think else 0}

        def resp_obj(ps: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"parts": ps, "role": "model"}, "index": 0}
            if finish:
                cand["finishReason"] = finish
            return {"candidates": [cand], "usageMetadata": usage, "modelVersion": request.match_info["model"],
                    "responseId": "fakeGeminiResponse"}

        if method == "generateContent":
            return web.json_response(resp_obj([p for ps in parts for p in ps], "STOP"))
        if request.query.get("alt") != "sse":
            return web.json_response({"error": {"code": 400, "message": "this fake only streams with alt=sse",
                                                "status": "INVALID_ARGUMENT"}}, status=400)
        chunks = [b"data: " + json.dumps(resp_obj(ps, "STOP" if i == len(parts) - 1 else None),
                                         separators=(",", ":")).encode() + b"\r\n\r\n" for i, ps in enumerate(parts)]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return await self._stream(request, resp, chunks, "gemini", 0.01 if slow else 0.0)


_GEMINI_ALLOWED = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                   "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                   "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}


def _gemini_schema_problem(body: dict[str, Any]) -> str:
    """The first keyword Gemini's Schema would reject, as the real API does."""
    def walk(s: Any) -> str:
        if not isinstance(s, dict):
            return ""
        for k, v in s.items():
            if k not in _GEMINI_ALLOWED:
                return k
            if k == "properties":
                for sub in v.values():
                    if (bad := walk(sub)):
                        return bad
            elif k == "items" and (bad := walk(v)):
                return bad
            elif k == "type" and not isinstance(v, str):
                return "type"
        return ""

    for t in body.get("tools", []):
        for d in t.get("functionDeclarations", []):
            if (bad := walk(d.get("parameters", {}))):
                return bad
    return ""


def main() -> None:
    """``python -m tests.upstreams.fake --port P``: serve until killed (benchmarks)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    f = FakeUpstreams(port=args.port).start()
    print(f"ready {f.url}", flush=True)
    f.thread.join()


if __name__ == "__main__":
    main()
