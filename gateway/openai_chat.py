"""OpenAI Chat Completions adapter: request -> canonical, stream -> chunks or JSON.

Streams ``chat.completion.chunk`` objects as ``data:`` lines ending with
``data: [DONE]``; tool calls as ``tool_calls`` deltas (id and name first, then
argument fragments); reasoning as ``reasoning_content`` (the llama.cpp/DeepSeek
convention); usage in a last chunk when ``stream_options.include_usage`` is set.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

import msgspec

from turnout.gateway.collect import Collected, parse_tool_args
from turnout.gateway.errors import ApiError, check_max_tokens, from_fail, validation_error
from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from turnout.protocol.ids import hex_id

DEFAULT_MAX_TOKENS = 4096


class _P(msgspec.Struct, tag_field="type"):
    pass


class OText(_P, tag="text"):
    text: str


class OImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class OImage(_P, tag="image_url"):
    image_url: OImageUrl


class OFunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class OToolCall(msgspec.Struct):
    id: str
    function: OFunctionCall
    type: Literal["function"] = "function"


class OMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[OText | OImage] | None = None
    name: str | None = None
    tool_calls: list[OToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class OFunction(msgspec.Struct):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    strict: bool | None = None


class OTool(msgspec.Struct):
    type: Literal["function"]
    function: OFunction


class ONamedFunction(msgspec.Struct):
    name: str


class OToolChoiceObj(msgspec.Struct):
    type: Literal["function"]
    function: ONamedFunction


class OStreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: list[OMessage]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool = False
    stream_options: OStreamOptions | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    tools: list[OTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | OToolChoiceObj | None = None
    parallel_tool_calls: bool | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    seed: int | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


_dec = msgspec.json.Decoder(ChatCompletionRequest)


def _parts(content: str | list[OText | OImage] | None) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    out: list[Part] = []
    for p in content:
        if isinstance(p, OText):
            out.append(TextPart(p.text))
        else:
            out.append(data_url_part(p.image_url.url))
    return out


def data_url_part(url: str) -> ImagePart:
    """An image by ``data:`` URL (inline base64) or by reference."""
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return ImagePart(media_type=head, data=data)
    return ImagePart(url=url)


def _response_format(rf: dict[str, Any] | None) -> ResponseFormat | None:
    """OpenAI's ``response_format``: text (the default), json_object, or json_schema
    with ``json_schema.name`` and ``json_schema.schema``."""
    if rf is None:
        return None
    t = rf.get("type")
    if t == "text":
        return None
    if t == "json_object":
        return ResponseFormat("json_object")
    if t != "json_schema":
        raise ApiError(400, f"response_format.type: Invalid value {t!r}: expected 'text', 'json_object' or 'json_schema'",
                       param="response_format.type")
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise ApiError(400, "response_format.json_schema: Field required when type is 'json_schema'",
                       param="response_format.json_schema")
    name = js.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ApiError(400, "response_format.json_schema.name: required, up to 64 letters, digits, '_' or '-'",
                       param="response_format.json_schema.name")
    schema = js.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise ApiError(400, "response_format.json_schema.schema: must be a JSON Schema object",
                       param="response_format.json_schema.schema")
    strict = js.get("strict")
    return ResponseFormat("json_schema", schema or {"type": "object"}, name,
                          strict if isinstance(strict, bool) else None)


def parse_chat(body: bytes, headers: Any = None, *, max_tokens_limit: int = 0) -> tuple[ChatRequest, bool]:
    """The canonical request and whether usage is wanted in the stream.
    ``max_tokens_limit``: the gateway's cap on the output tokens asked for (0: none)."""
    try:
        r = _dec.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise validation_error(e) from None
    for name in ("max_completion_tokens", "max_tokens"):
        asked = getattr(r, name)
        if asked is not None:
            check_max_tokens(asked, max_tokens_limit, name)
    if not r.messages:
        raise ApiError(400, "messages: at least one message is required", param="messages")
    system: list[TextPart] = []
    msgs: list[Message] = []
    for i, om in enumerate(r.messages):
        if om.role in ("system", "developer"):
            texts = [p for p in _parts(om.content) if isinstance(p, TextPart)]
            if not msgs:
                system.extend(texts)
            else:
                msgs.append(Message("system", list(texts)))
        elif om.role == "user":
            msgs.append(Message("user", _parts(om.content)))
        elif om.role == "assistant":
            content = _parts(om.content)
            if om.reasoning_content:
                content.insert(0, ThinkingPart(om.reasoning_content))
            for call in om.tool_calls or []:
                content.append(ToolUsePart(call.id, call.function.name, parse_tool_args(call.function.arguments)))
            msgs.append(Message("assistant", content))
        else:  # tool
            if not om.tool_call_id:
                raise ApiError(400, f"messages.{i}.tool_call_id: Field required for role 'tool'", param=f"messages.{i}.tool_call_id")
            inner = [p for p in _parts(om.content) if isinstance(p, TextPart | ImagePart)]
            part = ToolResultPart(om.tool_call_id, inner)
            if msgs and msgs[-1].role == "user" and all(isinstance(p, ToolResultPart) for p in msgs[-1].content):
                msgs[-1].content.append(part)  # consecutive tool messages: one turn
            else:
                msgs.append(Message("user", [part]))
    tc = r.tool_choice
    choice: ToolChoice | None = None
    if tc == "auto":
        choice = ToolChoice("auto")
    elif tc == "none":
        choice = ToolChoice("none")
    elif tc == "required":
        choice = ToolChoice("any")
    elif isinstance(tc, OToolChoiceObj):
        choice = ToolChoice("tool", tc.function.name)
    if choice is not None and r.parallel_tool_calls is False:
        choice.disable_parallel = True
    stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
    req = ChatRequest(
        model=r.model,
        messages=msgs,
        max_tokens=r.max_completion_tokens or r.max_tokens or DEFAULT_MAX_TOKENS,
        system=system,
        tools=[Tool(t.function.name, t.function.description, t.function.parameters) for t in (r.tools or [])],
        tool_choice=choice,
        temperature=r.temperature,
        top_p=r.top_p,
        stop=stop,
        stream=r.stream,
        session_id=(headers.get("X-Session-Id", "") if headers is not None else "") or (r.user or ""),
        api="openai",
    )
    if r.seed is not None:
        req.extra["seed"] = r.seed
    req.response_format = _response_format(r.response_format)
    for k in ("presence_penalty", "frequency_penalty", "reasoning_effort"):
        v = getattr(r, k)
        if v is not None:
            req.extra[k] = v
    return req, bool(r.stream_options and r.stream_options.include_usage)


FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "content_filter", "cancelled": "stop", "model_context_window_exceeded": "length"}


def new_completion_id() -> str:
    return hex_id("chatcmpl-")


def _usage(u: Any) -> dict[str, Any]:
    # Anthropic's input_tokens excludes cache reads; OpenAI's prompt_tokens includes them.
    prompt = u.input_tokens + u.cache_read_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
    }


def completion_body(c: Collected, model: str, cid: str) -> dict[str, Any]:
    text = "".join(p.text for p in c.parts if isinstance(p, TextPart))
    reasoning = "".join(p.thinking for p in c.parts if isinstance(p, ThinkingPart) and not p.redacted)
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": msgspec.json.encode(p.input).decode()}}
        for p in c.parts if isinstance(p, ToolUsePart)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if (text or not calls) else None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": FINISH.get(c.stop_reason, "stop"), "logprobs": None}],
        "usage": _usage(c.usage),
    }


_enc = msgspec.json.Encoder()
DONE_LINE = b"data: [DONE]\n\n"
PING_COMMENT = b": ping\n\n"


class ChunkEncoder:
    """Turns stream messages into ``chat.completion.chunk`` data lines."""

    def __init__(self, model: str, cid: str, include_usage: bool) -> None:
        self.model = model
        self.cid = cid
        self.created = int(time.time())
        self.include_usage = include_usage
        self.finished = False
        self._tool_slots: dict[int, int] = {}  # worker's tool index -> OpenAI index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + _enc.encode({
            "id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }) + b"\n\n"

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def encode(self, msg: m.StreamMsg) -> bytes:
        if isinstance(msg, m.TextDelta):
            return self._chunk({"content": msg.text})
        if isinstance(msg, m.ThinkingDelta):
            return self._chunk({"reasoning_content": msg.text}) if msg.text else b""
        if isinstance(msg, m.ToolCallStart):
            idx = self._tool_slots.setdefault(msg.index, len(self._tool_slots))
            return self._chunk({"tool_calls": [{"index": idx, "id": msg.id, "type": "function",
                                                "function": {"name": msg.name, "arguments": ""}}]})
        if isinstance(msg, m.ToolArgsDelta):
            idx = self._tool_slots.get(msg.index, 0)
            return self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": msg.partial_json}}]})
        if isinstance(msg, m.Ping):
            return PING_COMMENT
        if isinstance(msg, m.Done):
            self.finished = True
            out = self._chunk({}, FINISH.get(msg.stop_reason, "stop"))
            if self.include_usage:
                out += b"data: " + _enc.encode({
                    "id": self.cid, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": _usage(msg.usage),
                }) + b"\n\n"
            return out + DONE_LINE
        if isinstance(msg, m.Failed):
            self.finished = True
            return b"data: " + _enc.encode(from_fail(msg.kind, msg.message).body("openai")) + b"\n\n" + DONE_LINE
        return b""
