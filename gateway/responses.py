"""OpenAI Responses API adapter (``POST /v1/responses``): request -> canonical,
stream -> the Responses event grammar or one ``response`` object.

What is served: ``input`` as a string or a list of items (messages with
``input_text`` / ``input_image`` / ``output_text`` parts, ``function_call`` and
``function_call_output`` items; ``reasoning`` items are dropped: they are another
model's), ``instructions``, function ``tools`` and ``tool_choice``,
``max_output_tokens``, ``temperature``, ``top_p``, ``text.format`` (structured
output), ``parallel_tool_calls``, ``stream``. turnout keeps no responses, so
``previous_response_id`` and ``item_reference`` are refused with a 400 that says to
send the whole conversation (as clients do with ``store: false``). Tools OpenAI hosts
(web search, file search, computer use...) are left out of what the model sees.

Streaming events, each with a rising ``sequence_number``: ``response.created``,
``response.in_progress``; per message ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``; per function call ``response.output_item.added``,
``response.function_call_arguments.delta``..., ``.done``, ``response.output_item.done``;
then ``response.completed`` (or ``response.incomplete`` when ``max_output_tokens``
ran out, ``response.failed`` on an error) carrying the whole response with usage.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from turnout.gateway.collect import Collected
from turnout.gateway.errors import ApiError, check_max_tokens, from_fail, json_object
from turnout.gateway.openai_chat import DEFAULT_MAX_TOKENS, data_url_part
from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    Message,
    Part,
    ResponseFormat,
    TextPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from turnout.protocol.ids import hex_id

_enc = msgspec.json.Encoder()


def _bad(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", param=param)


def _parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise _bad(where, "expected a string or a list of content parts")
    out: list[Part] = []
    for j, p in enumerate(content):
        t = p.get("type") if isinstance(p, dict) else None
        if t in ("input_text", "output_text", "text"):
            out.append(TextPart(str(p.get("text", ""))))
        elif t == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(f"{where}.{j}.image_url", "an image URL or data: URL is required (file_id is not served)")
            out.append(data_url_part(url))
        elif t == "refusal":
            out.append(TextPart(str(p.get("refusal", ""))))
        else:
            raise _bad(f"{where}.{j}.type", f"{t!r} parts are not served (input_text, input_image, output_text)")
    return out


def _items(raw: Any) -> list[Message]:
    if isinstance(raw, str):
        return [Message("user", [TextPart(raw)])]
    if not isinstance(raw, list) or not raw:
        raise _bad("input", "expected a string or a non-empty list of items")
    msgs: list[Message] = []

    def add(role: Any, parts: list[Part]) -> None:
        if msgs and msgs[-1].role == role and role != "system":
            msgs[-1].content.extend(parts)
        else:
            msgs.append(Message(role, parts))

    for i, it in enumerate(raw):
        if not isinstance(it, dict):
            raise _bad(f"input.{i}", "expected an object")
        t = it.get("type", "message")
        if t == "message":
            role = it.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"input.{i}.role", f"invalid value {role!r}: expected user, assistant, system or developer")
            add("system" if role == "developer" else role, _parts(it.get("content", ""), f"input.{i}.content"))
        elif t == "function_call":
            try:
                args = msgspec.json.decode(it.get("arguments") or "{}")
            except msgspec.DecodeError:
                args = {"_raw": it.get("arguments")}
            add("assistant", [ToolUsePart(str(it.get("call_id") or it.get("id")), str(it.get("name", "")),
                                          args if isinstance(args, dict) else {"value": args})])
        elif t == "function_call_output":
            out = it.get("output", "")
            inner = _parts(out, f"input.{i}.output") if isinstance(out, list) else [TextPart(str(out))]
            add("user", [ToolResultPart(str(it.get("call_id")), [p for p in inner if isinstance(p, TextPart)])])
        elif t == "reasoning":
            continue  # another model's (often encrypted) reasoning: nothing a backend can use
        elif t == "item_reference":
            raise _bad(f"input.{i}.type", "turnout keeps no stored items: send the items themselves")
        else:
            raise _bad(f"input.{i}.type", f"{t!r} items are not served")
    return msgs


def _session(headers: Any) -> str:
    """The client's conversation id: ``X-Session-Id``, or Codex CLI's ``session-id``."""
    if headers is None:
        return ""
    return str(headers.get("X-Session-Id") or headers.get("session-id") or "")


def _format(text: Any) -> ResponseFormat | None:
    fmt = (text or {}).get("format") if isinstance(text, dict) else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return ResponseFormat("json_object")
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return ResponseFormat("json_schema", fmt["schema"], str(fmt.get("name", "")), fmt.get("strict"))
    raise _bad("text.format", "expected {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...} (json_schema needs schema)")


def _tools(raw: Any, where: str) -> list[Tool]:
    """Function tools, also those grouped in a ``namespace`` (Codex CLI sends some).
    Tools OpenAI hosts (web_search, file_search, code_interpreter, computer use,
    image generation, remote MCP, custom/freeform) are left out, as other
    OpenAI-compatible servers do: a model here cannot run them, and refusing the
    request would break clients that always send them."""
    if not isinstance(raw, list):
        raise _bad(where, "expected a list of tools")
    out: list[Tool] = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise _bad(f"{where}.{i}", "expected an object")
        if t.get("type") == "namespace":
            out.extend(_tools(t.get("tools") or [], f"{where}.{i}.tools"))
        elif t.get("type") == "function":
            if not t.get("name"):
                raise _bad(f"{where}.{i}.name", "Field required")
            params = t.get("parameters") or {}
            if not isinstance(params, dict):
                raise _bad(f"{where}.{i}.parameters", "expected a JSON Schema object")
            out.append(Tool(str(t["name"]), str(t.get("description") or ""), params))
    return out


def parse_responses(body: bytes, headers: Any = None, *, max_tokens_limit: int = 0) -> tuple[ChatRequest, dict[str, Any]]:
    """The canonical request, and the request fields echoed in the response object.
    ``max_tokens_limit``: the gateway's cap on ``max_output_tokens`` (0: none)."""
    r = json_object(body)
    model = r.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "Field required")
    if r.get("previous_response_id"):
        raise _bad("previous_response_id", "turnout keeps no responses: send the whole conversation in input "
                                           "(store: false)")
    if "input" not in r:
        raise _bad("input", "Field required")
    msgs = _items(r["input"])
    system = []
    if isinstance(r.get("instructions"), str) and r["instructions"]:
        system.append(TextPart(r["instructions"]))
    while msgs and msgs[0].role == "system":  # leading system/developer items join the instructions
        system.extend(p for p in msgs.pop(0).content if isinstance(p, TextPart))
    tools = _tools(r.get("tools") or [], "tools")
    tc = r.get("tool_choice")
    choice: ToolChoice | None = None
    if tc in ("auto", "none"):
        choice = ToolChoice(tc)
    elif tc == "required":
        choice = ToolChoice("any")
    elif isinstance(tc, dict) and tc.get("type") == "function" and tc.get("name"):
        choice = ToolChoice("tool", str(tc["name"]))
    elif tc is not None:
        raise _bad("tool_choice", "expected auto, none, required or {\"type\": \"function\", \"name\": ...}")
    if choice is not None and r.get("parallel_tool_calls") is False:
        choice.disable_parallel = True
    mot = r.get("max_output_tokens")
    if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool) or mot < 1):
        raise _bad("max_output_tokens", "expected an integer >= 1")
    if mot is not None:
        check_max_tokens(mot, max_tokens_limit, "max_output_tokens")
    for k in ("temperature", "top_p"):
        v = r.get(k)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise _bad(k, "expected a number")
    req = ChatRequest(
        model=model, messages=msgs, max_tokens=mot or DEFAULT_MAX_TOKENS, system=system, tools=tools,
        tool_choice=choice, temperature=r.get("temperature"), top_p=r.get("top_p"), stream=bool(r.get("stream")),
        session_id=_session(headers) or str(r.get("user") or ""),
        api="openai", response_format=_format(r.get("text")),
    )
    if not req.messages:
        raise _bad("input", "no user or assistant item to answer")
    echo = {k: r.get(k) for k in ("instructions", "max_output_tokens", "temperature", "top_p", "metadata", "user")}
    echo |= {"tools": r.get("tools") or [], "tool_choice": tc or "auto", "text": r.get("text") or {"format": {"type": "text"}},
             "parallel_tool_calls": r.get("parallel_tool_calls", True)}
    return req, echo


def new_response_id() -> str:
    return hex_id("resp_")


def _usage(u: Any) -> dict[str, Any]:
    inp = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": u.cache_read_input_tokens},
            "output_tokens": u.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + u.output_tokens}


def response_object(rid: str, model: str, echo: dict[str, Any], created: int, status: str,
                    output: list[dict[str, Any]], usage: Any = None, error: dict[str, Any] | None = None,
                    incomplete: str = "") -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None, "model": model, "output": output,
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
        "truncation": "disabled", "usage": _usage(usage) if usage is not None else None, **echo,
        "metadata": echo.get("metadata") or {},
    }


def _text_item(iid: str, text: str, status: str) -> dict[str, Any]:
    return {"id": iid, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []}


def _call_item(iid: str, call_id: str, name: str, args: str, status: str) -> dict[str, Any]:
    return {"id": iid, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": args}


def _status(stop_reason: str) -> tuple[str, str]:
    # The Responses API has no reason of its own for a full context window: an
    # answer cut by it is as incomplete as one cut by max_output_tokens.
    if stop_reason in ("max_tokens", "model_context_window_exceeded"):
        return "incomplete", "max_output_tokens"
    return "completed", ""


def response_body(c: Collected, model: str, rid: str, echo: dict[str, Any]) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    for p in c.parts:
        if isinstance(p, TextPart) and p.text:
            output.append(_text_item(hex_id("msg_"), p.text, "completed"))
        elif isinstance(p, ToolUsePart):
            output.append(_call_item(hex_id("fc_"), p.id, p.name, _enc.encode(p.input).decode(), "completed"))
    status, why = _status(c.stop_reason)
    return response_object(rid, model, echo, int(time.time()), status, output, c.usage, incomplete=why)


class EventEncoder:
    """Stream messages -> Responses API SSE events (see the module docstring)."""

    def __init__(self, model: str, rid: str, echo: dict[str, Any]) -> None:
        self.model, self.rid, self.echo = model, rid, echo
        self.created = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items, for the final response
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.text = ""
        self.args = ""
        self.tool_index: int | None = None
        self.finished = False

    def _ev(self, kind: str, **data: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _enc.encode(body) + b"\n\n"

    def start(self) -> bytes:
        r = response_object(self.rid, self.model, self.echo, self.created, "in_progress", [])
        return self._ev("response.created", response=r) + self._ev("response.in_progress", response=r)

    def _close(self, out: list[bytes]) -> None:
        it = self.open
        if it is None:
            return
        n = len(self.output)
        if it["type"] == "message":
            part = {"type": "output_text", "text": self.text, "annotations": []}
            out.append(self._ev("response.output_text.done", item_id=it["id"], output_index=n, content_index=0,
                                text=self.text, logprobs=[]))
            out.append(self._ev("response.content_part.done", item_id=it["id"], output_index=n, content_index=0, part=part))
            done = _text_item(it["id"], self.text, "completed")
        else:
            out.append(self._ev("response.function_call_arguments.done", item_id=it["id"], output_index=n,
                                arguments=self.args, name=it["name"]))
            done = _call_item(it["id"], it["call_id"], it["name"], self.args, "completed")
        out.append(self._ev("response.output_item.done", output_index=n, item=done))
        self.output.append(done)
        self.open = None

    def encode(self, msg: m.StreamMsg) -> bytes:
        out: list[bytes] = []
        n = len(self.output)
        if isinstance(msg, m.TextDelta):
            if self.open is None or self.open["type"] != "message":
                self._close(out)
                n = len(self.output)
                self.open, self.text = _text_item(hex_id("msg_"), "", "in_progress"), ""
                out.append(self._ev("response.output_item.added", output_index=n, item=self.open))
                out.append(self._ev("response.content_part.added", item_id=self.open["id"], output_index=n,
                                    content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
            self.text += msg.text
            out.append(self._ev("response.output_text.delta", item_id=self.open["id"], output_index=n,
                                content_index=0, delta=msg.text, logprobs=[]))
        elif isinstance(msg, m.ToolCallStart):
            self._close(out)
            n = len(self.output)
            self.open, self.args, self.tool_index = _call_item(hex_id("fc_"), msg.id, msg.name, "", "in_progress"), "", msg.index
            out.append(self._ev("response.output_item.added", output_index=n, item=self.open))
        elif isinstance(msg, m.ToolArgsDelta):
            if self.open is not None and self.open["type"] == "function_call" and msg.index == self.tool_index:
                self.args += msg.partial_json
                out.append(self._ev("response.function_call_arguments.delta", item_id=self.open["id"],
                                    output_index=n, delta=msg.partial_json))
        elif isinstance(msg, m.Done):
            self._close(out)
            status, why = _status(msg.stop_reason)
            r = response_object(self.rid, self.model, self.echo, self.created, status, self.output, msg.usage,
                                incomplete=why)
            out.append(self._ev("response.completed" if status == "completed" else "response.incomplete", response=r))
            self.finished = True
        elif isinstance(msg, m.Failed):
            self._close(out)
            err = from_fail(msg.kind, msg.message)
            r = response_object(self.rid, self.model, self.echo, self.created, "failed", self.output,
                                error={"code": "server_error" if err.status >= 500 else "invalid_request_error",
                                       "message": err.message})
            out.append(self._ev("response.failed", response=r))
            self.finished = True
        return b"".join(out)
