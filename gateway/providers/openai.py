"""OpenAI Chat Completions upstream: OpenAI itself, and any OpenAI-compatible
server by base URL (vLLM, Ollama, LM Studio, llama-server, llama_cpp.server,
OpenRouter).

Requests stream (``stream: true`` with ``stream_options.include_usage``); chunks are
``data: {chat.completion.chunk}`` lines ending with ``data: [DONE]``. Tool calls
arrive as ``delta.tool_calls`` (id and name first, then argument fragments, by
``index``); reasoning as ``reasoning_content`` (llama.cpp, vLLM, DeepSeek) or
``reasoning`` (OpenRouter, Ollama). OpenAI proper takes ``max_completion_tokens``;
compatible servers ``max_tokens``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from turnout.gateway import history
from turnout.gateway.providers.base import Upstream, decode, mk_done
from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    ImagePart,
    TextPart,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from turnout.protocol.config import EndpointConfig
from turnout.protocol.ids import hex_id

_enc = msgspec.json.Encoder()
_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
           "content_filter": "refusal"}


def _image_url(p: ImagePart) -> dict[str, Any]:
    url = f"data:{p.media_type or 'image/png'};base64,{p.data}" if p.data else p.url
    return {"type": "image_url", "image_url": {"url": url}}


def _content(parts: list[Any]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts)
    return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else _image_url(p) for p in parts]


def build_messages(req: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": "\n\n".join(p.text for p in req.system)})
    for msg in req.messages:
        if msg.role == "system":
            text = "\n".join(p.text for p in msg.content if isinstance(p, TextPart))
            if text:
                out.append({"role": "system", "content": text})
        elif msg.role == "assistant":
            text = "".join(p.text for p in msg.content if isinstance(p, TextPart))
            calls = [{"id": p.id, "type": "function",
                      "function": {"name": p.name, "arguments": _enc.encode(p.input).decode()}}
                     for p in msg.content if isinstance(p, ToolUsePart)]
            am: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                am["tool_calls"] = calls
            if text or calls:
                out.append(am)
        else:
            # Tool results first (they must follow the assistant's tool_calls), then
            # what the user said; images a tool returned ride in that user message.
            rest: list[Any] = []
            for p in msg.content:
                if isinstance(p, ToolResultPart):
                    text = "\n".join(c.text for c in p.content if isinstance(c, TextPart))
                    if p.is_error:
                        text = f"Error: {text}"
                    out.append({"role": "tool", "tool_call_id": p.tool_use_id, "content": text})
                    rest.extend(c for c in p.content if isinstance(c, ImagePart))
                elif isinstance(p, TextPart | ImagePart):
                    rest.append(p)
            if rest:
                out.append({"role": "user", "content": _content(rest)})
    return out


def build_body(req: ChatRequest, model: str, compatible: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": build_messages(req), "stream": True,
                            "stream_options": {"include_usage": True}}
    body["max_tokens" if compatible else "max_completion_tokens"] = req.max_tokens
    if req.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description,
            "parameters": t.input_schema or {"type": "object", "properties": {}}}} for t in req.tools]
        tc = req.tool_choice
        if tc is not None:
            if tc.type == "tool":
                body["tool_choice"] = {"type": "function", "function": {"name": tc.name}}
            else:
                body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[tc.type]
            if tc.disable_parallel:
                body["parallel_tool_calls"] = False
    for k, v in (("temperature", req.temperature), ("top_p", req.top_p)):
        if v is not None:
            body[k] = v
    if req.stop:
        body["stop"] = req.stop[:4]
    for k in ("seed", "presence_penalty", "frequency_penalty", "reasoning_effort"):
        if k in req.extra:
            body[k] = req.extra[k]
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            js: dict[str, Any] = {"name": rf.name or "response", "schema": rf.schema or {"type": "object"}}
            if rf.strict is not None:
                js["strict"] = rf.strict
            body["response_format"] = {"type": "json_schema", "json_schema": js}
    return body


class OpenAIProvider:
    """Options:
    compatible: an OpenAI-compatible server (``max_tokens``, no key required)."""

    def __init__(self, compatible: bool = False) -> None:
        self.compatible = compatible
        self.kind = "openai_compatible" if compatible else "openai"

    def build(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
              raw: bytes | None, stream: bool) -> Upstream:
        base = (ep.base_url or "https://api.openai.com/v1").rstrip("/")
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        body = build_body(history.make_safe(req, "openai"), model, self.compatible)
        return Upstream(f"{base}/chat/completions", headers, _enc.encode(body))

    def build_count(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
                    raw: bytes | None) -> None:
        return None  # Chat Completions has no counting call: the caller estimates

    def parse_count(self, body: bytes) -> int:
        raise NotImplementedError

    def parser(self, passthrough: bool = False) -> OpenAIParser:
        return OpenAIParser()

    def error_message(self, body: bytes) -> str:
        try:
            err = decode(body)
            if isinstance(err, dict) and isinstance(err.get("error"), dict):
                return str(err["error"].get("message", ""))
            if isinstance(err, dict) and "detail" in err:  # FastAPI-based servers
                return str(err["detail"])[:500]
            return str(err)[:500]
        except msgspec.DecodeError:
            return body[:300].decode(errors="replace")


class OpenAIParser:
    """``chat.completion.chunk`` lines (or one ``chat.completion`` body) -> stream
    messages."""

    def __init__(self) -> None:
        self.finished = False
        self.usage = Usage()
        self.stop_reason = "end_turn"
        self.tools: dict[int, str] = {}  # OpenAI index -> id
        self.chunks = 0  # content chunks: the output size when no usage comes
        self.got_usage = False

    def _done(self) -> m.Done:
        if not self.got_usage:
            # Servers that ignore stream_options (llama_cpp.server) send no usage;
            # they stream one token a chunk, so the chunk count is the output size.
            self.usage.output_tokens = self.chunks
        return mk_done(self._reason(), self.usage)  # type: ignore[arg-type]

    def _reason(self) -> str:
        # Some servers say "stop" after streaming tool calls.
        return "tool_use" if self.tools and self.stop_reason == "end_turn" else self.stop_reason

    def _usage(self, u: dict[str, Any]) -> None:
        cached = ((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
        self.usage.input_tokens = (u.get("prompt_tokens") or 0) - cached
        self.usage.cache_read_input_tokens = cached
        self.usage.output_tokens = u.get("completion_tokens") or 0

    def _tool(self, tc: dict[str, Any], out: list[m.StreamMsg]) -> None:
        idx = tc.get("index", len(self.tools))
        fn = tc.get("function") or {}
        if idx not in self.tools:
            tid = tc.get("id") or hex_id("call_", 8)
            self.tools[idx] = tid
            out.append(m.ToolCallStart("", 0, idx, tid, fn.get("name") or ""))
        args = fn.get("arguments")
        if args:
            out.append(m.ToolArgsDelta("", 0, idx, args if isinstance(args, str) else _enc.encode(args).decode()))

    def feed(self, event: str, data: bytes) -> list[m.StreamMsg]:
        if data == b"[DONE]":
            self.finished = True
            return [self._done()]
        ev = decode(data)
        if "error" in ev and not ev.get("choices"):
            self.finished = True
            err = ev["error"] if isinstance(ev["error"], dict) else {"message": str(ev["error"])}
            return [m.Failed("", 0, "internal", f"upstream: {err.get('message', 'error')}")]
        out: list[m.StreamMsg] = []
        if ev.get("usage"):
            self.got_usage = True
            self._usage(ev["usage"])
        whole = ev.get("object") == "chat.completion"
        for ch in ev.get("choices") or []:
            d = ch.get("message" if whole else "delta") or {}
            r = d.get("reasoning_content") or d.get("reasoning")
            if r:
                out.append(m.ThinkingDelta("", 0, r))
            if d.get("content"):
                out.append(m.TextDelta("", 0, d["content"]))
            for tc in d.get("tool_calls") or []:
                self._tool(tc, out)
            if r or d.get("content") or d.get("tool_calls"):
                self.chunks += 1
            if ch.get("finish_reason"):
                self.stop_reason = _FINISH.get(ch["finish_reason"], "end_turn")
        if whole:
            self.finished = True
            out.append(self._done())
        return out

    def finish(self) -> list[m.StreamMsg]:
        # Some servers end the body without [DONE]; a finish_reason makes it whole.
        self.finished = True
        return [self._done()]
