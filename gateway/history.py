"""Make a conversation safe to send to another provider than the one that wrote it.

A conversation that moves between providers (a per-session switch, a fallback)
carries things the new provider rejects or must not see:

* thinking blocks signed by another provider (Anthropic checks signatures and
  answers 400 on one it did not make; Gemini wants its own ``thoughtSignature``
  back on the part it came with): kept for their owner, dropped elsewhere;
* tool schemas with JSON-Schema keywords Gemini's OpenAPI subset rejects
  (``$schema``, ``additionalProperties``, ``$ref``, type arrays, ``const``...);
* ``anthropic-beta`` values an upstream does not accept;
* tool ids repeated across turns (some local models and servers reuse ``call_0``),
  ids with characters Anthropic refuses, tool results without their call.

Signatures turnout itself makes for a non-Anthropic provider are tagged
``turnout:<provider>:<opaque>`` so their owner is known when they come back.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from turnout.protocol.chat import (
    ChatRequest,
    Message,
    OpaquePart,
    Part,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
)
from turnout.protocol.signature import is_turnout_signature

SIG_PREFIX = "turnout:"
# Anthropic's signatures are long base64 blobs; a short one (a local model's
# placeholder, "fake-signature") was not made by Anthropic and would be refused.
_MIN_ANTHROPIC_SIG = 64
_ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def tag_signature(provider: str, sig: str) -> str:
    return f"{SIG_PREFIX}{provider}:{sig}"


def signature_owner(sig: str) -> str:
    """Which provider made a thinking signature: a tagged one says it; an untagged
    long one is Anthropic's; anything else has no owner."""
    if sig.startswith(SIG_PREFIX):
        return sig[len(SIG_PREFIX):].split(":", 1)[0]
    if is_turnout_signature(sig):
        return "local"  # signed by one of turnout's local workers (protocol/signature.py)
    if len(sig) >= _MIN_ANTHROPIC_SIG:
        return "anthropic"
    return ""


def untag_signature(sig: str) -> str:
    if sig.startswith(SIG_PREFIX):
        return sig[len(SIG_PREFIX):].split(":", 1)[1] if sig.count(":") >= 2 else ""
    return sig


def _keep_thinking(p: ThinkingPart, provider: str) -> bool:
    if provider == "anthropic":
        # Redacted thinking is Anthropic's own encrypted block.
        return p.redacted or signature_owner(p.signature) == "anthropic"
    if provider == "gemini":
        return signature_owner(p.signature) == "gemini"
    return False  # OpenAI Chat Completions takes no reasoning back


def needs_repair(req: ChatRequest, provider: str) -> bool:
    """Whether the history carries anything ``provider`` would reject (used to
    decide if an Anthropic body may go upstream untouched)."""
    seen: set[str] = set()
    for msg in req.messages:
        for p in msg.content:
            if isinstance(p, ThinkingPart) and not _keep_thinking(p, provider):
                return True
            if isinstance(p, ToolUsePart):
                if p.id in seen or (provider == "anthropic" and not _ANTHROPIC_ID.match(p.id)):
                    return True
                seen.add(p.id)
    return False


def make_safe(req: ChatRequest, provider: str) -> ChatRequest:
    """A copy of ``req`` that ``provider`` accepts: foreign thinking dropped, tool
    ids unique (and Anthropic-safe), every tool call answered and every tool result
    matched to a call."""
    out = msgspec.structs.replace(req, messages=[])
    seen: set[str] = set()
    renamed: dict[str, str] = {}  # an id as sent -> the id it is now, for the next results
    n = 0
    for msg in req.messages:
        parts: list[Part] = []
        for p in msg.content:
            if isinstance(p, ThinkingPart):
                if _keep_thinking(p, provider):
                    parts.append(p)
            elif isinstance(p, ToolUsePart):
                new = re.sub(r"[^a-zA-Z0-9_-]", "_", p.id) or "toolu"
                while new in seen:
                    n += 1
                    new = f"{re.sub(r'[^a-zA-Z0-9_-]', '_', p.id)}_{n}"
                seen.add(new)
                renamed[p.id] = new
                parts.append(ToolUsePart(new, p.name, p.input) if new != p.id else p)
            elif isinstance(p, OpaquePart):
                if p.provider == provider:
                    parts.append(p)
            elif isinstance(p, ToolResultPart):
                tid = renamed.pop(p.tool_use_id, None)
                if tid is None:
                    # A result for no call (its call was dropped or never sent):
                    # providers refuse it; keep what it said as text.
                    text = "\n".join(c.text for c in p.content if isinstance(c, TextPart))
                    parts.append(TextPart(f"[tool result {p.tool_use_id}]: {text}"))
                else:
                    parts.append(ToolResultPart(tid, p.content, p.is_error) if tid != p.tool_use_id else p)
            else:
                parts.append(p)
        if msg.role == "user" and renamed:
            # Calls of the previous assistant turn this user turn did not answer.
            missing = [ToolResultPart(tid, [TextPart("(no result: the call was interrupted)")], True)
                       for tid in renamed.values()]
            parts = [*missing, *parts]
            renamed.clear()
        if parts or msg.role == "system":
            out.messages.append(Message(msg.role, parts))
    return out


def without_opaque(req: ChatRequest) -> ChatRequest:
    """``req`` without another provider's opaque blocks (for a local model)."""
    if not any(isinstance(p, OpaquePart) for msg in req.messages for p in msg.content):
        return req
    return msgspec.structs.replace(req, messages=[
        Message(msg.role, [p for p in msg.content if not isinstance(p, OpaquePart)]) for msg in req.messages])


def tool_names(req: ChatRequest) -> dict[str, str]:
    """tool_use id -> tool name (Gemini's functionResponse names the function)."""
    return {p.id: p.name for msg in req.messages for p in msg.content if isinstance(p, ToolUsePart)}


# ------------------------------------------------------------ Gemini tool schemas

# The OpenAPI 3.0 subset Gemini's ``Schema`` accepts; anything else is a 400
# ("Invalid JSON payload received. Unknown name ...").
_GEMINI_KEYS = {
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
}
_GEMINI_FORMATS = {"string": {"enum", "date-time"}, "integer": {"int32", "int64"}, "number": {"float", "double"}}


def gemini_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """``schema`` reduced to what Gemini accepts: ``$ref`` inlined (bounded depth),
    ``oneOf`` as ``anyOf``, ``allOf`` merged, ``const`` as a one-value enum, type
    arrays as a type plus ``nullable``, unknown keywords and formats removed."""
    if not isinstance(schema, dict):
        return schema
    if defs is None:
        defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if depth > 8:
        return {"type": "object"}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1], {})
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return gemini_schema(merged, defs, depth + 1)
    s = dict(schema)
    if "allOf" in s:
        for sub in s.pop("allOf") or []:
            if isinstance(sub, dict):
                for k, v in sub.items():
                    if k == "properties":
                        s.setdefault("properties", {}).update(v)
                    elif k == "required":
                        s["required"] = [*s.get("required", []), *v]
                    else:
                        s.setdefault(k, v)
    if "oneOf" in s and "anyOf" not in s:
        s["anyOf"] = s.pop("oneOf")
    if "const" in s:
        s["enum"] = [s.pop("const")]
    t = s.get("type")
    if isinstance(t, list):
        kinds = [x for x in t if x != "null"]
        if "null" in t:
            s["nullable"] = True
        s["type"] = kinds[0] if kinds else "string"
    if "enum" in s:
        # Gemini's enum is string-only.
        s["enum"] = [str(v) for v in s["enum"] if v is not None]
        s["type"] = "string"
    out: dict[str, Any] = {}
    for k, v in s.items():
        if k not in _GEMINI_KEYS:
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {name: gemini_schema(sub, defs, depth + 1) for name, sub in v.items()}
        elif k == "items":
            out[k] = gemini_schema(v, defs, depth + 1)
        elif k == "anyOf" and isinstance(v, list):
            out[k] = [gemini_schema(sub, defs, depth + 1) for sub in v]
        elif k == "format" and v not in _GEMINI_FORMATS.get(str(s.get("type")), set()):
            continue
        else:
            out[k] = v
    if "required" in out:
        props = out.get("properties", {})
        out["required"] = [r for r in dict.fromkeys(out["required"]) if r in props]
        if not out["required"]:
            del out["required"]
    if out.get("type") == "object" and not out.get("properties"):
        out.pop("properties", None)
    return out


# ------------------------------------------------------------------ beta headers


def filter_betas(betas: list[str], provider: str, accepted: list[str] | None) -> list[str]:
    """``anthropic-beta`` values to send upstream: none to a non-Anthropic provider;
    for Anthropic, those the endpoint lists as accepted (all when it lists none)."""
    if provider != "anthropic":
        return []
    if accepted is None:
        return list(betas)
    ok = set(accepted)
    return [b for b in betas if b in ok]
