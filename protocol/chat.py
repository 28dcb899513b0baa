"""The canonical chat model.

Every client API adapter (Anthropic Messages, OpenAI Chat Completions) converts its
request into a :class:`ChatRequest`, and every backend (local worker or cloud
provider) consumes one. Translation between N APIs and M providers is therefore
N + M converters, not N x M.

The model follows Anthropic's content-block shape because it is the richest of the
supported APIs (thinking with signatures, tool results with images, cache hints);
OpenAI's shape maps onto it without loss.

All structs are msgspec Structs so the same objects travel on the ZeroMQ bus.
Fields are append-only and carry defaults (schema evolution).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class TextPart(msgspec.Struct, tag="text", omit_defaults=True):
    text: str
    cache: bool = False  # the client asked for a cache breakpoint after this part


class ImagePart(msgspec.Struct, tag="image", omit_defaults=True):
    media_type: str = ""
    data: str = ""  # base64, when inline
    url: str = ""  # when by reference


class ToolUsePart(msgspec.Struct, tag="tool_use", omit_defaults=True):
    id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultPart(msgspec.Struct, tag="tool_result", omit_defaults=True):
    tool_use_id: str
    content: list[TextPart | ImagePart] = msgspec.field(default_factory=list)
    is_error: bool = False


class ThinkingPart(msgspec.Struct, tag="thinking", omit_defaults=True):
    thinking: str = ""
    signature: str = ""
    redacted: bool = False  # redacted_thinking: `thinking` holds the opaque data


class OpaquePart(msgspec.Struct, tag="opaque", omit_defaults=True):
    """A content block only its own provider understands (Anthropic's
    server_tool_use, web_search_tool_result, mcp_tool_use, container_upload, and
    block types newer than turnout): ``block`` is the JSON object as the client sent
    it. Kept for ``provider``, dropped for every other backend."""

    provider: str
    block: dict[str, Any] = msgspec.field(default_factory=dict)


Part = TextPart | ImagePart | ToolUsePart | ToolResultPart | ThinkingPart | OpaquePart

Role = Literal["system", "user", "assistant"]


class Message(msgspec.Struct, omit_defaults=True):
    """One conversation turn. ``role="system"`` entries may appear mid-conversation
    (Claude Code sends them); templates decide how to render them."""

    role: Role
    content: list[Part] = msgspec.field(default_factory=list)


class Tool(msgspec.Struct, omit_defaults=True):
    name: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolChoice(msgspec.Struct, omit_defaults=True):
    """auto: model decides; any: must call some tool; tool: must call `name`;
    none: must not call a tool."""

    type: Literal["auto", "any", "tool", "none"] = "auto"
    name: str = ""
    disable_parallel: bool = False


class ThinkingConfig(msgspec.Struct, omit_defaults=True):
    type: Literal["enabled", "disabled", "adaptive"] = "disabled"
    budget_tokens: int = 0


class ResponseFormat(msgspec.Struct, omit_defaults=True):
    """Structured output: the answer's text is one JSON object (``json_object``), or
    one that matches ``schema`` (``json_schema``). From OpenAI's ``response_format``
    and Anthropic's ``output_config.format``; local models are held to it by a
    grammar (llama.cpp) or an instruction (MLX), providers by their own option."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str = ""
    strict: bool | None = None


class ChatRequest(msgspec.Struct, omit_defaults=True):
    """A chat request in canonical form.

    ``api`` names the client API it arrived on, so a provider speaking the same API
    can pass extras through untouched (``extra`` keeps fields turnout does not model,
    e.g. Anthropic's ``context_management``); ``session_id`` is the client's
    conversation id when it sends one (Claude Code does)."""

    model: str
    messages: list[Message]
    max_tokens: int
    system: list[TextPart] = msgspec.field(default_factory=list)
    tools: list[Tool] = msgspec.field(default_factory=list)
    tool_choice: ToolChoice | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    stream: bool = False
    thinking: ThinkingConfig | None = None
    session_id: str = ""
    api: Literal["anthropic", "openai"] = "anthropic"
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    response_format: ResponseFormat | None = None


# ``model_context_window_exceeded``: the answer filled the model's context window
# before ``max_tokens`` (Anthropic's stop reason for that case; OpenAI's APIs call it
# ``length`` / ``incomplete``).
StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "cancelled", "refusal", "model_context_window_exceeded"
]


class Usage(msgspec.Struct, omit_defaults=False):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


def last_user_text(req: ChatRequest) -> str:
    """Text of the last user turn (text parts, else tool-result text)."""
    for msg in reversed(req.messages):
        if msg.role != "user":
            continue
        texts = [p.text for p in msg.content if isinstance(p, TextPart)]
        if not texts:
            for p in msg.content:
                if isinstance(p, ToolResultPart):
                    texts.extend(c.text for c in p.content if isinstance(c, TextPart))
        return "\n".join(texts)
    return ""


def all_text(req: ChatRequest) -> str:
    """Every piece of text the model would see, for whitespace token counting."""
    out: list[str] = [p.text for p in req.system]
    for msg in req.messages:
        for p in msg.content:
            if isinstance(p, TextPart):
                out.append(p.text)
            elif isinstance(p, ToolUsePart):
                out.append(p.name)
                out.append(msgspec.json.encode(p.input).decode())
            elif isinstance(p, ToolResultPart):
                out.extend(c.text for c in p.content if isinstance(c, TextPart))
            elif isinstance(p, ThinkingPart) and not p.redacted:
                out.append(p.thinking)
    for t in req.tools:
        out.append(t.name)
        out.append(t.description)
        out.append(msgspec.json.encode(t.input_schema).decode())
    return "\n".join(out)
