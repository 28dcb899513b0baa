"""Anthropic Messages API adapter: request -> canonical (answers: gateway/anthropic_stream.py).

Follows the Messages API as documented and as Claude Code uses it: ``?beta=true``,
``anthropic-beta`` headers, ``role: "system"`` entries inside ``messages``,
``cache_control`` on blocks, ``thinking`` (enabled/disabled/adaptive),
``output_config``, ``context_management`` and ``metadata`` (accepted and kept as
extras for an Anthropic upstream), and the full SSE grammar.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from turnout.gateway.errors import ApiError, check_max_tokens, validation_error
from turnout.protocol.chat import (
    ChatRequest,
    ImagePart,
    Message,
    OpaquePart,
    Part,
    ResponseFormat,
    TextPart,
    ThinkingConfig,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)

# ----------------------------------------------------------------- request model


class _B(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class AText(_B, tag="text"):
    text: str
    cache_control: dict[str, Any] | None = None
    citations: Any = None


class AImageSource(msgspec.Struct):
    type: Literal["base64", "url", "file"]
    media_type: str = ""
    data: str = ""
    url: str = ""
    file_id: str = ""


class AImage(_B, tag="image"):
    source: AImageSource
    cache_control: dict[str, Any] | None = None


class ADocument(_B, tag="document"):
    source: dict[str, Any]
    title: str | None = None
    context: str | None = None
    cache_control: dict[str, Any] | None = None
    citations: Any = None


class AToolUse(_B, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class AToolResult(_B, tag="tool_result"):
    tool_use_id: str
    content: str | list[AText | AImage | ADocument] = ""
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


class AThinking(_B, tag="thinking"):
    thinking: str
    signature: str = ""


class ARedactedThinking(_B, tag="redacted_thinking"):
    data: str


ABlock = AText | AImage | ADocument | AToolUse | AToolResult | AThinking | ARedactedThinking


class AMessage(msgspec.Struct):
    role: Literal["user", "assistant", "system"]
    content: str | list[ABlock]


class ATool(msgspec.Struct, omit_defaults=True):
    name: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    type: str | None = None  # "custom" or a server tool such as web_search_20250305
    cache_control: dict[str, Any] | None = None


class AToolChoice(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str = ""
    disable_parallel_tool_use: bool = False


class AThinkingConfig(msgspec.Struct):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int = 0


class AMetadata(msgspec.Struct):
    user_id: str | None = None


class _Common(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: list[AMessage]
    system: str | list[AText] | None = None
    tools: list[ATool] | None = None
    tool_choice: AToolChoice | None = None
    thinking: AThinkingConfig | None = None
    metadata: AMetadata | None = None
    output_config: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None  # the structured-outputs beta's name for output_config.format
    mcp_servers: list[dict[str, Any]] | None = None
    container: Any = None
    service_tier: str | None = None


class MessagesRequest(_Common, kw_only=True):
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stop_sequences: list[str] | None = None


class CountTokensRequest(_Common, kw_only=True):
    pass


_T = TypeVar("_T", bound=_Common)
_messages_dec = msgspec.json.Decoder(MessagesRequest)
_count_dec = msgspec.json.Decoder(CountTokensRequest)


def _doc_text(d: ADocument) -> str:
    src = d.source
    if src.get("type") == "text":
        return str(src.get("data", ""))
    if src.get("type") == "content" and isinstance(src.get("content"), list):
        return "\n".join(str(c.get("text", "")) for c in src["content"] if isinstance(c, dict))
    return f"[document: {d.title or src.get('type', 'unknown')}]"


def _image(b: AImage) -> ImagePart:
    s = b.source
    return ImagePart(media_type=s.media_type, data=s.data, url=s.url or (f"file:{s.file_id}" if s.file_id else ""))


def _blocks(content: str | list[ABlock]) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    out: list[Part] = []
    for b in content:
        if isinstance(b, AText):
            out.append(TextPart(b.text, cache=b.cache_control is not None))
        elif isinstance(b, AImage):
            out.append(_image(b))
        elif isinstance(b, ADocument):
            out.append(TextPart(_doc_text(b), cache=b.cache_control is not None))
        elif isinstance(b, AToolUse):
            out.append(ToolUsePart(b.id, b.name, b.input))
        elif isinstance(b, AToolResult):
            inner: list[TextPart | ImagePart] = []
            if isinstance(b.content, str):
                inner.append(TextPart(b.content))
            else:
                for c in b.content:
                    if isinstance(c, AText):
                        inner.append(TextPart(c.text))
                    elif isinstance(c, AImage):
                        inner.append(_image(c))
                    else:
                        inner.append(TextPart(_doc_text(c)))
            out.append(ToolResultPart(b.tool_use_id, inner, b.is_error))
        elif isinstance(b, AThinking):
            out.append(ThinkingPart(b.thinking, b.signature))
        elif isinstance(b, ARedactedThinking):
            out.append(ThinkingPart(b.data, redacted=True))
    return out


def session_id(headers: Any, metadata: AMetadata | None) -> str:
    """Claude Code's conversation id: its header, else inside ``metadata.user_id``
    (a JSON string carrying ``session_id``)."""
    sid = headers.get("X-Claude-Code-Session-Id") if headers is not None else None
    if sid:
        return str(sid)
    if metadata is not None and metadata.user_id:
        try:
            val = json.loads(metadata.user_id)
            if isinstance(val, dict) and isinstance(val.get("session_id"), str):
                return val["session_id"]
        except ValueError:
            pass
    return ""


def _canonical(r: _Common, headers: Any, max_tokens: int, stream: bool) -> ChatRequest:
    if not r.messages:
        raise ApiError(400, "messages: at least one message is required", param="messages")
    system: list[TextPart] = []
    if isinstance(r.system, str):
        if r.system:
            system.append(TextPart(r.system))
    elif r.system:
        system = [TextPart(b.text, cache=b.cache_control is not None) for b in r.system]
    extra: dict[str, Any] = {}
    for k in ("output_config", "output_format", "context_management", "mcp_servers", "container", "service_tier"):
        v = getattr(r, k)
        if v is not None:
            extra[k] = v
    if r.metadata is not None and r.metadata.user_id is not None:
        extra["metadata"] = {"user_id": r.metadata.user_id}
    beta = headers.get("anthropic-beta") if headers is not None else None
    if beta:
        extra["anthropic_beta"] = [b.strip() for b in str(beta).split(",") if b.strip()]
    fmt = (r.output_config or {}).get("format") or r.output_format
    rf: ResponseFormat | None = None
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise ApiError(400, "output_config.format: expected {\"type\": \"json_schema\", \"schema\": {...}}",
                           param="output_config.format")
        rf = ResponseFormat("json_schema", fmt["schema"])
    tc = r.tool_choice
    return ChatRequest(
        model=r.model,
        messages=[Message(role=msg.role, content=_blocks(msg.content)) for msg in r.messages],
        max_tokens=max_tokens,
        system=system,
        tools=[Tool(t.name, t.description, t.input_schema) for t in (r.tools or [])],
        tool_choice=ToolChoice(tc.type, tc.name, tc.disable_parallel_tool_use) if tc else None,
        stream=stream,
        thinking=ThinkingConfig(r.thinking.type, r.thinking.budget_tokens) if r.thinking else None,
        session_id=session_id(headers, r.metadata),
        api="anthropic",
        extra=extra,
        response_format=rf,
    )


# Blocks of Anthropic's server tools and connectors (server_tool_use,
# web_search_tool_result, code_execution_tool_result, mcp_tool_use, ...), kept
# opaque; and ones with text in them (search_result, tool_reference), kept as text.
# Anything else is a mistake and gets a 400 naming it, as the real API does.
_OPAQUE = re.compile(r"^(server_tool_use|container_upload|[a-z_]+_tool_(use|result))$")
_AS_TEXT = frozenset({"search_result", "tool_reference"})


def _inner_text(c: dict[str, Any]) -> str:
    """A tool result's block of a type turnout does not model (search_result,
    tool_reference, ...) as text, for backends other than Anthropic."""
    label = c.get("title") or c.get("source") or c.get("tool_name") or ""
    inner = c.get("content")
    texts = [str(x.get("text", "")) for x in inner if isinstance(x, dict)] if isinstance(inner, list) else []
    return "\n".join([f"[{c.get('type')}{': ' + str(label) if label else ''}]", *texts])


def _decode_lenient(body: bytes, typ: type[_T]) -> tuple[_T, dict[tuple[int, int], dict[str, Any]]] | None:
    """The request again, after the typed decoder refused it, with block types
    turnout does not model set aside: top-level ones are returned by (message,
    block) position to become :class:`OpaquePart`; ones inside a tool result become
    text. None when there were none (the typed decoder's error stands)."""
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    opaque: dict[tuple[int, int], dict[str, Any]] = {}
    changed = False
    msgs = raw.get("messages") if isinstance(raw, dict) else None
    for i, msg in enumerate(msgs if isinstance(msgs, list) else []):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for j, b in enumerate(content):
            if not isinstance(b, dict) or not isinstance(b.get("type"), str):
                continue
            if _OPAQUE.match(b["type"]):
                opaque[(i, j)] = b
                content[j] = {"type": "text", "text": ""}
            elif b["type"] in _AS_TEXT:
                content[j] = {"type": "text", "text": _inner_text(b)}
                changed = True
            elif b["type"] == "tool_result" and isinstance(b.get("content"), list):
                inner = b["content"]
                for k, c in enumerate(inner):
                    if isinstance(c, dict) and isinstance(c.get("type"), str) and c["type"] in _AS_TEXT:
                        inner[k] = {"type": "text", "text": _inner_text(c)}
                        changed = True
    if not opaque and not changed:
        return None
    return msgspec.convert(raw, typ), opaque


def _decode(body: bytes, dec: msgspec.json.Decoder[_T], typ: type[_T]) -> tuple[_T, dict[tuple[int, int], dict[str, Any]]]:
    try:
        return dec.decode(body), {}
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        try:
            lenient = _decode_lenient(body, typ) if isinstance(e, msgspec.ValidationError) else None
        except msgspec.ValidationError as e2:
            raise validation_error(e2) from None
        if lenient is None:
            raise validation_error(e) from None
        return lenient


def _put_opaque(req: ChatRequest, opaque: dict[tuple[int, int], dict[str, Any]]) -> None:
    # _blocks makes exactly one part per block, so positions carry over.
    for (i, j), block in opaque.items():
        req.messages[i].content[j] = OpaquePart("anthropic", block)


def parse_messages(body: bytes, headers: Any = None, *, max_tokens_limit: int = 0) -> ChatRequest:
    """``max_tokens_limit``: the gateway's cap on ``max_tokens`` (0: none)."""
    r, opaque = _decode(body, _messages_dec, MessagesRequest)
    check_max_tokens(r.max_tokens, max_tokens_limit)
    if r.tool_choice is not None and r.tool_choice.type == "tool" and not r.tool_choice.name:
        raise ApiError(400, "tool_choice.name: Field required when type is 'tool'", param="tool_choice.name")
    req = _canonical(r, headers, r.max_tokens, r.stream)
    _put_opaque(req, opaque)
    req.temperature = r.temperature
    req.top_p = r.top_p
    req.top_k = r.top_k
    req.stop = list(r.stop_sequences or [])
    return req


def parse_count_tokens(body: bytes, headers: Any = None) -> ChatRequest:
    r, opaque = _decode(body, _count_dec, CountTokensRequest)
    req = _canonical(r, headers, 1, False)
    _put_opaque(req, opaque)
    return req
