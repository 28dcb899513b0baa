"""Google Gemini upstream: ``models/{model}:streamGenerateContent?alt=sse`` for
streaming clients, ``models/{model}:generateContent`` otherwise (the key in
``x-goog-api-key``).

Contents are ``{role: user|model, parts}``; a part is ``text`` (``thought: true``
for thinking), ``inlineData``, ``fileData``, ``functionCall {id?, name, args}`` or
``functionResponse {id?, name, response}``; any part may carry a
``thoughtSignature`` that must come back on the same part next turn. turnout
streams it to the client as a thinking signature tagged ``turnout:gemini:`` and
puts it back on the part that follows it. Gemini 3 wants a signature on the first
function call of each model turn: a call made by another provider gets the
documented ``skip_thought_signature_validator``. Tool schemas are reduced to
Gemini's OpenAPI subset (:func:`gateway.history.gemini_schema`).
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
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from turnout.protocol.config import EndpointConfig
from turnout.protocol.ids import hex_id

_enc = msgspec.json.Encoder()
SKIP_SIGNATURE = "skip_thought_signature_validator"
_FINISH = {"STOP": "end_turn", "MAX_TOKENS": "max_tokens", "SAFETY": "refusal", "RECITATION": "refusal",
           "BLOCKLIST": "refusal", "PROHIBITED_CONTENT": "refusal", "SPII": "refusal",
           "IMAGE_SAFETY": "refusal"}


def _image(p: ImagePart) -> dict[str, Any]:
    if p.data:
        return {"inlineData": {"mimeType": p.media_type or "image/png", "data": p.data}}
    return {"fileData": {"mimeType": p.media_type or "image/png", "fileUri": p.url}}


def build_body(req: ChatRequest) -> dict[str, Any]:
    names = history.tool_names(req)
    system = [p.text for p in req.system]
    contents: list[dict[str, Any]] = []
    for msg in req.messages:
        if msg.role == "system":
            system.extend(p.text for p in msg.content if isinstance(p, TextPart))
            continue
        parts: list[dict[str, Any]] = []
        pending_sig = ""
        for p in msg.content:
            if isinstance(p, ThinkingPart):
                # Only Gemini-signed thinking survives make_safe; its signature goes
                # back on the part it came with (the next one).
                pending_sig = history.untag_signature(p.signature)
                continue
            if isinstance(p, TextPart):
                part: dict[str, Any] = {"text": p.text}
            elif isinstance(p, ImagePart):
                part = _image(p)
            elif isinstance(p, ToolUsePart):
                part = {"functionCall": {"id": p.id, "name": p.name, "args": p.input}}
            else:
                assert isinstance(p, ToolResultPart)
                text = "\n".join(c.text for c in p.content if isinstance(c, TextPart))
                part = {"functionResponse": {"id": p.tool_use_id, "name": names.get(p.tool_use_id, "tool"),
                                             "response": {"error" if p.is_error else "result": text}}}
                parts.append(part)
                parts.extend(_image(c) for c in p.content if isinstance(c, ImagePart))
                continue
            if pending_sig:
                part["thoughtSignature"] = pending_sig
                pending_sig = ""
            parts.append(part)
        if pending_sig and parts:
            parts[-1].setdefault("thoughtSignature", pending_sig)
        if msg.role == "assistant":
            calls = [pt for pt in parts if "functionCall" in pt]
            if calls and "thoughtSignature" not in calls[0]:
                calls[0]["thoughtSignature"] = SKIP_SIGNATURE
        if not parts:
            continue
        role = "model" if msg.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    if req.tools:
        decls = []
        for t in req.tools:
            d: dict[str, Any] = {"name": t.name, "description": t.description}
            schema = history.gemini_schema(t.input_schema) if t.input_schema else {}
            if schema.get("properties"):
                d["parameters"] = schema
            decls.append(d)
        body["tools"] = [{"functionDeclarations": decls}]
        tc = req.tool_choice
        if tc is not None:
            fcc: dict[str, Any] = {"mode": {"auto": "AUTO", "any": "ANY", "tool": "ANY", "none": "NONE"}[tc.type]}
            if tc.type == "tool":
                fcc["allowedFunctionNames"] = [tc.name]
            body["toolConfig"] = {"functionCallingConfig": fcc}
    gc: dict[str, Any] = {"maxOutputTokens": req.max_tokens}
    for k, v in (("temperature", req.temperature), ("topP", req.top_p), ("topK", req.top_k)):
        if v is not None:
            gc[k] = v
    if req.stop:
        gc["stopSequences"] = req.stop[:5]
    if req.thinking is not None and req.thinking.type != "disabled":
        tcfg: dict[str, Any] = {"includeThoughts": True}
        if req.thinking.type == "enabled" and req.thinking.budget_tokens:
            tcfg["thinkingBudget"] = req.thinking.budget_tokens
        gc["thinkingConfig"] = tcfg
    rf = req.response_format
    if rf is not None:
        gc["responseMimeType"] = "application/json"
        if rf.schema:
            gc["responseSchema"] = history.gemini_schema(rf.schema)
    body["generationConfig"] = gc
    return body


class GeminiProvider:
    kind = "gemini"

    def build(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
              raw: bytes | None, stream: bool) -> Upstream:
        base = (ep.base_url or "https://generativelanguage.googleapis.com").rstrip("/")
        headers = {"content-type": "application/json"}
        if key:
            headers["x-goog-api-key"] = key
        body = _enc.encode(build_body(history.make_safe(req, "gemini")))
        if req.stream:
            return Upstream(f"{base}/v1beta/models/{model}:streamGenerateContent?alt=sse", headers, body)
        return Upstream(f"{base}/v1beta/models/{model}:generateContent", headers, body, stream=False)

    def build_count(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
                    raw: bytes | None) -> Upstream:
        up = self.build(ep, model, req, key, raw, False)
        body = {"generateContentRequest": {"model": f"models/{model}", **decode(up.body)}}
        url = up.url.rsplit(":", 1)[0] + ":countTokens"
        return Upstream(url, up.headers, _enc.encode(body), stream=False)

    def parse_count(self, body: bytes) -> int:
        return int(decode(body)["totalTokens"])

    def parser(self, passthrough: bool = False) -> GeminiParser:
        return GeminiParser()

    def error_message(self, body: bytes) -> str:
        try:
            err = decode(body)
            if isinstance(err, list) and err:  # the non-SSE stream wraps it in an array
                err = err[0]
            e = err["error"]
            return f"{e.get('status', '')}: {e.get('message', '')}".strip(": ")
        except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
            return body[:300].decode(errors="replace")


class GeminiParser:
    """``GenerateContentResponse`` chunks (SSE ``data:`` lines, or one JSON body)
    -> stream messages. Usage is cumulative: the last chunk's counts win."""

    def __init__(self) -> None:
        self.finished = False
        self.usage = Usage()
        self.stop_reason = "end_turn"
        self.n_tools = 0
        self.started = False

    def feed(self, event: str, data: bytes) -> list[m.StreamMsg]:
        ev = decode(data)
        if isinstance(ev, list):  # generateContent without alt=sse: an array of chunks
            out: list[m.StreamMsg] = []
            for item in ev:
                out.extend(self._chunk(item))
            return out
        return self._chunk(ev)

    def _chunk(self, ev: dict[str, Any]) -> list[m.StreamMsg]:
        out: list[m.StreamMsg] = []
        if "error" in ev:
            self.finished = True
            e = ev["error"]
            kind: m.FailKind = "overloaded" if e.get("code") in (429, 503) else "internal"
            return [m.Failed("", 0, kind, f"gemini: {e.get('message', 'error')}")]
        u = ev.get("usageMetadata")
        if u:
            cached = u.get("cachedContentTokenCount", 0) or 0
            self.usage.input_tokens = (u.get("promptTokenCount", 0) or 0) - cached
            self.usage.cache_read_input_tokens = cached
            self.usage.output_tokens = (u.get("candidatesTokenCount", 0) or 0) + (u.get("thoughtsTokenCount", 0) or 0)
        fb = ev.get("promptFeedback") or {}
        if fb.get("blockReason"):
            self.stop_reason = "refusal"
        for cand in (ev.get("candidates") or [])[:1]:
            for part in (cand.get("content") or {}).get("parts") or []:
                sig = part.get("thoughtSignature")
                if sig:
                    out.append(m.ThinkingDelta("", 0, "", history.tag_signature("gemini", sig)))
                if part.get("thought") and part.get("text"):
                    out.append(m.ThinkingDelta("", 0, part["text"]))
                elif part.get("text"):
                    out.append(m.TextDelta("", 0, part["text"]))
                elif "functionCall" in part:
                    fc = part["functionCall"]
                    tid = fc.get("id") or hex_id("toolu_", 10)
                    out.append(m.ToolCallStart("", 0, self.n_tools, tid, fc.get("name", "")))
                    out.append(m.ToolArgsDelta("", 0, self.n_tools, _enc.encode(fc.get("args") or {}).decode()))
                    self.n_tools += 1
            fr = cand.get("finishReason")
            if fr:
                self.stop_reason = _FINISH.get(fr, "end_turn")
        return out

    def finish(self) -> list[m.StreamMsg]:
        self.finished = True
        reason = "tool_use" if self.n_tools and self.stop_reason == "end_turn" else self.stop_reason
        return [mk_done(reason, self.usage)]  # type: ignore[arg-type]
