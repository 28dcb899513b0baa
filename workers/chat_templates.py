"""Render a canonical :class:`ChatRequest` into one prompt string for a local model.

Roles:

* :func:`detect` picks a **family** (how turns are written) and a **tool format**
  (how tools are offered and how calls come back) from the GGUF's chat template and
  architecture, or from the ``chat_format`` option.
* :func:`normalise` turns canonical messages into HF-style dicts every renderer
  shares: all leading system text (Claude Code's three system blocks and any
  ``role: "system"`` entries before the first turn) becomes one system message;
  a ``role: "system"`` entry later in the conversation is folded into the user turn
  before it (so the prompt prefix stays the same from one turn to the next and the
  KV cache is reused), or into the next user turn when none precedes it.
* :func:`render` writes the prompt: with the GGUF's Jinja template when there is one
  (the HF chat-template conventions: ``messages``, ``tools``, ``bos_token``,
  ``add_generation_prompt``, ``enable_thinking``), else with turnout's own template
  for the family. llama-cpp-python's built-in ``gemma`` format drops system
  messages, and the default model (Gemma 3 270M base) has no template at all, so
  Gemma is written by hand: system text folded into the first user turn.

Tool formats: ``hermes`` (Qwen/Hermes ``<tools>`` + ``<tool_call>``), ``llama3``
(JSON ``{"name", "parameters"}``), ``mistral`` (``[AVAILABLE_TOOLS]`` /
``[TOOL_CALLS]``) and ``json`` (generic instructions: reply with one JSON object).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from protocol.chat import (
    ChatRequest,
    ImagePart,
    TextPart,
    Tool,
    ToolResultPart,
    ToolUsePart,
)

Family = Literal["gguf", "gemma", "chatml", "llama3", "mistral"]
ToolFormat = Literal["hermes", "llama3", "mistral", "json"]

FAMILIES: tuple[str, ...] = ("gguf", "gemma", "chatml", "llama3", "mistral")
TOOL_FORMATS: tuple[str, ...] = ("hermes", "llama3", "mistral", "json")

# Strings that end the assistant's turn in each family, beyond the EOG tokens
# llama.cpp knows: a base model (the default Gemma) happily writes the next turn.
_FAMILY_STOPS: dict[str, list[str]] = {
    "gemma": ["<end_of_turn>", "<start_of_turn>"],
    "chatml": ["<|im_end|>", "<|im_start|>"],
    "llama3": ["<|eot_id|>", "<|eom_id|>", "<|start_header_id|>"],
    "mistral": ["</s>", "[INST]"],
}

# What a BASE model (no chat template in its weights' file) ends its turn with by
# default, besides its family's markers above: such a model never writes an
# end-of-turn token; it continues the text. Measured on the default model (Gemma 3
# 270M base) after ``<start_of_turn>model\n``, sampled as Claude Code gets it
# (temperature 0.8): on Claude Code's real ~19.5k-token request (12 samples) and on
# six short questions with and without a system prompt (48 samples) it never wrote
# <end_of_turn>; its first line is its answer when it answers ("The capital of
# France is Paris."), then it repeats that line or makes up more questions, line
# after line, mostly without a blank line (8 of the 12 Claude Code samples had none
# in 200 tokens, so "\n\n" would run them to the window); every first line ended
# within 80 tokens. So a base model's turn is one line. Other families' base
# models continue text the same way and get the same default. ``[models.options]
# stop`` replaces it (``stop = []``: none).
BASE_MODEL_STOPS: dict[str, list[str]] = {
    "gemma": ["\n"],
}
BASE_MODEL_STOPS_OTHER: list[str] = ["\n"]


def extra_stops(stop: list[str] | None, family: str, base_model: bool) -> list[str]:
    """End-of-turn strings beyond the template's own (``Rendered.stop``): the
    ``stop`` option when set (``[]``: none), else a base model's defaults
    (:data:`BASE_MODEL_STOPS`), else none: an instruction model ends its turn
    with its template's end-of-generation token."""
    if stop is not None:
        return list(stop)
    if not base_model:
        return []
    return list(BASE_MODEL_STOPS.get(family, BASE_MODEL_STOPS_OTHER))


class TemplateError(Exception):
    """The model's chat template refused the conversation."""


@dataclass(slots=True)
class TemplateInfo:
    """What a renderer needs to know about the model (from :func:`detect`)."""

    family: Family
    tool_format: ToolFormat
    chat_template: str = ""
    bos_token: str = ""
    eos_token: str = ""
    stop: list[str] = field(default_factory=list)
    compiled: Any = field(default=None, repr=False, compare=False)  # the Jinja template, once built


@dataclass(slots=True)
class Rendered:
    """A prompt and how to read what the model writes after it."""

    prompt: str
    stop: list[str]  # strings that end the turn (not client stop sequences)
    tool_format: ToolFormat
    tools_enabled: bool
    thinking_open: bool = False  # the prompt ends inside <think>: output starts thinking


def detect(
    chat_template: str,
    architecture: str,
    *,
    bos_token: str = "",
    eos_token: str = "",
    chat_format: str = "",
    tool_format: str = "",
) -> TemplateInfo:
    """Choose family and tool format. ``chat_format``/``tool_format`` override."""
    t = chat_template
    fam: str
    if chat_format:
        if chat_format not in FAMILIES:
            raise ValueError(f"chat_format must be one of {', '.join(FAMILIES)}")
        fam = chat_format
    elif t:
        fam = "gguf"
    elif architecture.startswith("gemma"):
        fam = "gemma"
    else:
        fam = "chatml"
    if fam == "gguf" and not t:
        raise ValueError("chat_format = 'gguf' but the GGUF has no tokenizer.chat_template")
    tf: str
    if tool_format:
        if tool_format not in TOOL_FORMATS:
            raise ValueError(f"tool_format must be one of {', '.join(TOOL_FORMATS)}")
        tf = tool_format
    elif fam == "gguf":
        if "<tool_call>" in t or "<|im_start|>" in t:
            tf = "hermes"
        elif "<|python_tag|>" in t or "ipython" in t or "<|start_header_id|>" in t:
            tf = "llama3"
        elif "[TOOL_CALLS]" in t or "[AVAILABLE_TOOLS]" in t or "[INST]" in t:
            tf = "mistral"
        else:
            tf = "json"
    else:
        tf = {"chatml": "hermes", "llama3": "llama3", "mistral": "mistral"}.get(fam, "json")
    stop = list(_FAMILY_STOPS.get(fam, []))
    if fam == "gguf":
        for fam_name, marks in _FAMILY_STOPS.items():
            if any(mk in t for mk in marks):
                stop.extend(mk for mk in _FAMILY_STOPS[fam_name] if mk not in stop)
    if eos_token and eos_token not in stop:
        stop.append(eos_token)
    return TemplateInfo(fam, tf, t, bos_token, eos_token, stop)  # type: ignore[arg-type]


# ------------------------------------------------------------------ normalise


def _text_of(parts: list[Any]) -> str:
    out = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append(p.text)
        elif isinstance(p, ImagePart):
            out.append("[image]")  # text-only models: say that an image was there
    return "".join(out) if len(out) <= 1 else "\n\n".join(s for s in out if s)


def _join(a: str, b: str) -> str:
    return b if not a else a if not b else f"{a}\n\n{b}"


def json_instruction(req: ChatRequest) -> str:
    """What a structured-output request asks, in words (llama.cpp's grammar then
    holds the model to it; MLX has only the words)."""
    rf = req.response_format
    if rf is None:
        return ""
    text = "Answer with one JSON object and nothing else: no prose, no code fence."
    if rf.schema:
        text += " It must match this JSON Schema:\n" + json.dumps(rf.schema, ensure_ascii=False)
    return text


def normalise(req: ChatRequest, tools_enabled: bool) -> list[dict[str, Any]]:
    """Canonical messages -> HF-style message dicts (see the module docstring).

    Output roles: system (at most one, first), user, assistant (``content`` and
    ``tool_calls``), tool (``content``, ``tool_call_id``, ``name``). Consecutive
    user (or assistant) turns are merged, since several templates insist on
    alternation."""
    system = _join("\n\n".join(p.text for p in req.system if p.text), json_instruction(req))
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name, for tool results
    pending_system = ""  # a mid-conversation system entry with no user turn before it

    def add_user(text: str) -> None:
        nonlocal pending_system
        text = _join(pending_system, text)
        pending_system = ""
        if out and out[-1]["role"] == "user":
            out[-1]["content"] = _join(out[-1]["content"], text)
        else:
            out.append({"role": "user", "content": text})

    for msg in req.messages:
        if msg.role == "system":
            text = _text_of(msg.content)
            if not out:
                system = _join(system, text)
            elif out[-1]["role"] == "user":
                out[-1]["content"] = _join(out[-1]["content"], text)
            else:
                pending_system = _join(pending_system, text)
            continue
        if msg.role == "assistant":
            text = "".join(p.text for p in msg.content if isinstance(p, TextPart))
            calls = []
            for p in msg.content:
                if isinstance(p, ToolUsePart):
                    names[p.id] = p.name
                    calls.append(
                        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.input}}
                    )
            if out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
                out[-1]["content"] = _join(out[-1]["content"], text)
                if calls:
                    out[-1]["tool_calls"] = calls
            else:
                d: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    d["tool_calls"] = calls
                out.append(d)
            continue
        # user: tool results first (they answer the previous assistant turn)
        for p in msg.content:
            if isinstance(p, ToolResultPart):
                content = _text_of(p.content)
                if p.is_error:
                    content = f"Error: {content}"
                out.append(
                    {
                        "role": "tool",
                        "content": content,
                        "tool_call_id": p.tool_use_id,
                        "name": names.get(p.tool_use_id, ""),
                    }
                )
        text = _text_of([p for p in msg.content if isinstance(p, TextPart | ImagePart)])
        if text or not any(isinstance(p, ToolResultPart) for p in msg.content):
            add_user(text)
    if pending_system:
        add_user("")
    if system:
        out.insert(0, {"role": "system", "content": system})
    if not tools_enabled:
        # The client forbade tools (tool_choice none): show past calls as text.
        out = [_untool(d) for d in out]
    return out


def _untool(d: dict[str, Any]) -> dict[str, Any]:
    if d["role"] == "tool":
        return {"role": "user", "content": f"[tool result]\n{d['content']}"}
    if d.get("tool_calls"):
        calls = "\n".join(_call_json(c, "arguments") for c in d["tool_calls"])
        return {"role": "assistant", "content": _join(d["content"], calls)}
    return d


def _call_json(call: dict[str, Any], args_key: str) -> str:
    fn = call["function"]
    return json.dumps({"name": fn["name"], args_key: fn["arguments"]}, ensure_ascii=False)


def tool_specs(tools: list[Tool]) -> list[dict[str, Any]]:
    """Tools in the OpenAI function shape HF templates expect."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.input_schema or {"type": "object", "properties": {}},
            },
        }
        for t in tools
    ]


def tool_instructions(tools: list[Tool], fmt: ToolFormat) -> str:
    """The system-prompt text that offers ``tools`` in format ``fmt``."""
    specs = tool_specs(tools)
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in specs)
    if fmt == "hermes":
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{lines}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )
    if fmt == "llama3":
        return (
            "You have access to the following functions. To call a function, respond with "
            "JSON for a function call with its proper arguments, in the format "
            '{"name": function name, "parameters": dictionary of argument name and its value}. '
            "Do not use variables.\n\n" + "\n\n".join(json.dumps(s, indent=4, ensure_ascii=False) for s in specs)
        )
    # json (and mistral when the template cannot place [AVAILABLE_TOOLS] itself)
    return (
        "# Tools\n\nYou can call these tools:\n"
        f"{lines}\n\n"
        "To call a tool, reply with only a JSON object and nothing else:\n"
        '{"name": "<tool name>", "arguments": {<arguments as the tool\'s schema requires>}}'
    )


# ------------------------------------------------------------------ render


def render(req: ChatRequest, info: TemplateInfo) -> Rendered:
    """The prompt for ``req`` (ending where the assistant's answer starts)."""
    choice = req.tool_choice.type if req.tool_choice else "auto"
    tools_enabled = bool(req.tools) and choice != "none"
    tools = req.tools if tools_enabled else []
    msgs = normalise(req, tools_enabled)
    thinking = req.thinking is not None and req.thinking.type != "disabled"
    fam = info.family
    if fam == "gguf":
        prompt = _render_jinja(msgs, tools, info, thinking)
    elif fam == "gemma":
        prompt = _render_gemma(msgs, tools, info)
    elif fam == "llama3":
        prompt = _render_llama3(msgs, tools, info)
    elif fam == "mistral":
        prompt = _render_mistral(msgs, tools, info)
    else:
        prompt = _render_chatml(msgs, tools, info)
    thinking_open = prompt.rstrip().endswith("<think>")
    return Rendered(prompt, list(info.stop), info.tool_format, tools_enabled, thinking_open)


def _with_tools_in_system(msgs: list[dict[str, Any]], tools: list[Tool], fmt: ToolFormat) -> list[dict[str, Any]]:
    if not tools:
        return msgs
    text = tool_instructions(tools, fmt)
    if msgs and msgs[0]["role"] == "system":
        return [{"role": "system", "content": _join(msgs[0]["content"], text)}, *msgs[1:]]
    return [{"role": "system", "content": text}, *msgs]


def _assistant_text(d: dict[str, Any], fmt: ToolFormat) -> str:
    """An assistant turn's text with its tool calls written the way ``fmt`` expects
    the model to write them."""
    text = d.get("content") or ""
    calls = d.get("tool_calls") or []
    if not calls:
        return text
    if fmt == "hermes":
        body = "\n".join(f"<tool_call>\n{_call_json(c, 'arguments')}\n</tool_call>" for c in calls)
    elif fmt == "llama3":
        body = "\n".join(_call_json(c, "parameters") for c in calls)
    elif fmt == "mistral":
        body = "[TOOL_CALLS]" + json.dumps(
            [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls],
            ensure_ascii=False,
        )
    else:
        body = "\n".join(_call_json(c, "arguments") for c in calls)
    return _join(text, body) if fmt != "mistral" else text + body


def _tool_result_text(d: dict[str, Any], fmt: ToolFormat) -> str:
    if fmt == "hermes":
        return f"<tool_response>\n{d['content']}\n</tool_response>"
    name = d.get("name") or "tool"
    return f"Result of {name} (call {d.get('tool_call_id', '')}):\n{d['content']}"


def _user_turns(msgs: list[dict[str, Any]], fmt: ToolFormat) -> list[dict[str, Any]]:
    """Fold tool results into user turns, for templates with no tool role."""
    out: list[dict[str, Any]] = []
    for d in msgs:
        if d["role"] == "tool":
            d = {"role": "user", "content": _tool_result_text(d, fmt)}
        if out and d["role"] == "user" and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": _join(out[-1]["content"], d["content"])}
        else:
            out.append(d)
    return out


def _render_gemma(msgs: list[dict[str, Any]], tools: list[Tool], info: TemplateInfo) -> str:
    # Gemma has no system role: the system text opens the first user turn.
    msgs = _user_turns(_with_tools_in_system(msgs, tools, info.tool_format), info.tool_format)
    system = ""
    if msgs and msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"], msgs[1:]
    if system and (not msgs or msgs[0]["role"] != "user"):
        msgs = [{"role": "user", "content": ""}, *msgs]
    parts: list[str] = []
    for i, d in enumerate(msgs):
        if d["role"] == "user":
            text = _join(system, d["content"]) if i == 0 else d["content"]
            parts.append(f"<start_of_turn>user\n{text}<end_of_turn>\n")
        else:
            text = _assistant_text(d, info.tool_format)
            parts.append(f"<start_of_turn>model\n{text}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


def _render_chatml(msgs: list[dict[str, Any]], tools: list[Tool], info: TemplateInfo) -> str:
    msgs = _user_turns(_with_tools_in_system(msgs, tools, info.tool_format), info.tool_format)
    parts = []
    for d in msgs:
        text = _assistant_text(d, info.tool_format) if d["role"] == "assistant" else d["content"]
        parts.append(f"<|im_start|>{d['role']}\n{text}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _render_llama3(msgs: list[dict[str, Any]], tools: list[Tool], info: TemplateInfo) -> str:
    msgs = _with_tools_in_system(msgs, tools, "llama3")
    parts = []
    for d in msgs:
        role = "ipython" if d["role"] == "tool" else d["role"]
        text = _assistant_text(d, "llama3") if role == "assistant" else d["content"]
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return info.bos_token + "".join(parts)


def _render_mistral(msgs: list[dict[str, Any]], tools: list[Tool], info: TemplateInfo) -> str:
    system = ""
    if msgs and msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"], msgs[1:]
    last_user = max((i for i, d in enumerate(msgs) if d["role"] == "user"), default=-1)
    parts = [info.bos_token]
    for i, d in enumerate(msgs):
        if d["role"] == "user":
            if i == last_user and tools:
                parts.append(f"[AVAILABLE_TOOLS]{json.dumps(tool_specs(tools), ensure_ascii=False)}[/AVAILABLE_TOOLS]")
            # Mistral puts the system prompt in the last user turn.
            text = _join(system, d["content"]) if i == last_user else d["content"]
            parts.append(f"[INST]{text}[/INST]")
        elif d["role"] == "tool":
            body = json.dumps({"content": d["content"], "call_id": d.get("tool_call_id", "")}, ensure_ascii=False)
            parts.append(f"[TOOL_RESULTS]{body}[/TOOL_RESULTS]")
        else:
            parts.append(_assistant_text(d, "mistral") + (info.eos_token or "</s>"))
    if last_user < 0 and system:
        parts.append(f"[INST]{system}[/INST]")
    return "".join(parts)


def _raise(message: str) -> None:
    raise TemplateError(message)


def _compile(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **kw: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _render_jinja(msgs: list[dict[str, Any]], tools: list[Tool], info: TemplateInfo, thinking: bool) -> str:
    if info.compiled is None:
        info.compiled = _compile(info.chat_template)
    tpl = info.compiled
    native_tools = "tools" in info.chat_template
    kw: dict[str, Any] = {}
    if tools and native_tools:
        kw["tools"] = tool_specs(tools)
    else:
        msgs = _with_tools_in_system(msgs, tools, info.tool_format)
    if not ("tool_calls" in info.chat_template and "tool" in info.chat_template):
        # A template that knows no tool roles: write calls and results as text.
        msgs = [
            {"role": d["role"], "content": _assistant_text(d, info.tool_format)} if d["role"] == "assistant" else d
            for d in _user_turns(msgs, info.tool_format)
        ]
    try:
        return str(
            tpl.render(
                messages=msgs,
                add_generation_prompt=True,
                bos_token=info.bos_token,
                eos_token=info.eos_token,
                enable_thinking=thinking,
                **kw,
            )
        )
    except TemplateError:
        raise
    except Exception as e:  # jinja2 errors from a template we did not write
        raise TemplateError(f"{type(e).__name__}: {e}") from None


class ChatOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Options every local chat backend (llama_cpp, mlx_lm) takes.

    ``chat_format``/``tool_format``: override template detection. ``stop``: more
    strings that end the model's turn (like Ollama's ``stop`` parameter), besides
    the template's markers. Unset, a base model (no chat template) gets its family's
    defaults (:data:`BASE_MODEL_STOPS`: it does not end its turns by itself, so
    without one every answer runs to max_tokens or the window); a list replaces
    them, ``[]`` turns them off. A grammar-forced tool call or a structured-output
    answer is never cut by these (its grammar ends it).
    ``seed``: sampling seed (-1: random). ``force_tool``: a test/debug knob, not for
    normal use: a request that offers a tool of this name and ends with the user's
    own text is answered as if ``tool_choice`` named that tool, so a base model
    drives a whole tool round trip (see :func:`workers.tool_calls.effective_choice`).
    The rest are sampling defaults used when the request does not set them."""

    chat_format: str = ""
    tool_format: str = ""
    seed: int = -1
    force_tool: str = ""
    stop: list[str] | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
