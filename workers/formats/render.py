"""Render a canonical :class:`ChatRequest` into one prompt for a local model.

Roles:

* :func:`load_template` takes what a model file carries (its chat template, BOS/EOS
  text, architecture) and picks the :class:`~workers.formats.families.Family` that
  reads its answers (or the user's ``tool_format``). A model with no template (a
  base model such as the bundled Gemma 3 270M) gets one of turnout's own
  (:data:`BUILTIN`), chosen by ``chat_format`` or the architecture.
* :func:`normalise` turns canonical messages into the message dicts chat templates
  expect (Hugging Face / OpenAI shape): all leading system text (Claude Code's
  system blocks and any ``role: "system"`` entries before the first turn) becomes
  one system message; a ``role: "system"`` entry later in the conversation is
  folded into the user turn before it (so the prompt prefix stays the same from one
  turn to the next and the KV cache is reused), or into the next user turn when
  none precedes it; tool results become ``tool`` messages; earlier reasoning is
  kept as ``reasoning_content`` for templates that show it.
* :func:`render` fits those messages to what the template can take (probed once:
  :func:`~workers.formats.jinja_env.probe_caps`): no system role → the system text
  opens the first user turn; no tool support → the tools are described in the
  system message and earlier calls and results written as text in the family's
  own format; arguments as objects or JSON strings; tool-call ids in the form the
  family requires (Mistral's 9 alphanumerics, Kimi's ``functions.NAME:i``). A last
  assistant message is a prefill: the prompt ends inside it and the model carries
  on from there. The result says whether the prompt leaves a reasoning block open,
  so the reader starts in the right place.

Template variables passed: ``messages``, ``tools`` (only when there are tools),
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``enable_thinking``,
``reasoning_effort`` (gpt-oss), ``date_string``/``datetime`` (as llama.cpp passes
them), ``functions`` (firefunction's name for the tool list).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2

from turnout.protocol.chat import (
    ChatRequest,
    ImagePart,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
)
from turnout.workers.formats import jinja_env as je
from turnout.workers.formats.families import Family, by_name, detect
from turnout.workers.formats.jinja_env import Caps, TemplateError
from turnout.workers.formats.schema import ToolSet
from turnout.workers.formats.tooltext import calls_as_text, join_text, tool_instructions, tool_specs

__all__ = ["BUILTIN", "Rendered", "Template", "TemplateError", "fit_messages", "load_template", "normalise", "render",
           "render_messages"]

# ------------------------------------------------------------------ built-in templates

# Gemma has no system role: the system text opens the first user turn (llama-cpp-
# python's own "gemma" format drops system messages, and the bundled base model
# has no template of its own).
_GEMMA = """{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}{%- set ns.system = messages[0].content -%}{%- endif -%}
{%- set first = true -%}
{%- for m in messages if m.role != 'system' -%}
{%- set text = m.content -%}
{%- if loop.first and ns.system -%}{%- set text = ns.system + ('\\n\\n' + text if text else '') -%}{%- endif -%}
<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}
{{ text }}<end_of_turn>
{% endfor -%}
{%- if ns.system and not (messages | rejectattr('role', 'equalto', 'system') | list) -%}
<start_of_turn>user
{{ ns.system }}<end_of_turn>
{% endif -%}
{%- if add_generation_prompt -%}<start_of_turn>model
{% endif -%}"""

_CHATML = """{%- for m in messages -%}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}"""

_LLAMA3 = """{{- bos_token -}}
{%- for m in messages -%}
<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>

{{ m.content }}<|eot_id|>
{%- endfor -%}
{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>

{% endif -%}"""

# Mistral puts the system prompt in the last user turn.
_MISTRAL = """{{- bos_token -}}
{%- set ns = namespace(system='', last=-1) -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- elif m.role == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for m in messages if m.role != 'system' -%}
{%- if m.role == 'user' -%}
[INST]{{ (ns.system + '\\n\\n' + m.content) if (loop.index0 == ns.last - (1 if messages[0].role == 'system' else 0) and ns.system) else m.content }}[/INST]
{%- else -%}
{{ m.content }}{{ eos_token }}
{%- endif -%}
{%- endfor -%}
{%- if ns.last < 0 and ns.system -%}[INST]{{ ns.system }}[/INST]{%- endif -%}"""

BUILTIN: dict[str, str] = {"gemma": _GEMMA, "chatml": _CHATML, "llama3": _LLAMA3, "mistral": _MISTRAL}
CHAT_FORMATS: tuple[str, ...] = ("gguf", *BUILTIN)

# The family that reads a built-in format's answers (the tool format its
# instructions ask for); generic JSON where turnout has none closer.
_BUILTIN_FAMILY = {"chatml": "hermes", "llama3": "llama3", "mistral": "mistral"}


@dataclass(slots=True)
class Template:
    """A model's chat template, compiled, with what rendering needs to know."""

    source: str
    compiled: jinja2.Template
    caps: Caps
    family: Family
    chat_format: str  # "gguf" (the model's own) or a BUILTIN name
    bos_token: str = ""
    eos_token: str = ""
    stops: list[str] = field(default_factory=list)  # the family's end-of-turn strings and the EOS text
    message_thinking_key: bool = False  # the template reads earlier reasoning as message.thinking
    # How tools are described when turnout writes them into the prompt (a template
    # that does not describe tools itself): "full" JSON specs, or "brief" (a line
    # each: :func:`workers.formats.tooltext.brief_tool_lines`).
    tool_detail: str = "full"


@dataclass(slots=True)
class Rendered:
    """A prompt and how to read what the model writes after it."""

    prompt: str
    stop: list[str]  # strings that end the turn (not the client's stop sequences)
    family: Family
    tools_enabled: bool
    reasoning_open: str = ""  # the prompt ends inside a reasoning block (its opener text on)
    tools: ToolSet = field(default_factory=ToolSet)
    json_response: bool = False  # the request asked for a JSON answer (a fence around it is layout)

    @property
    def tool_format(self) -> str:
        return self.family.name

    def new_reader(self, *, raw_reasoning: bool = False) -> Any:
        return self.family.new_reader(self.tools, reasoning_open=self.reasoning_open,
                                      raw_reasoning=raw_reasoning, tools_enabled=self.tools_enabled,
                                      json_response=self.json_response)


def _builtin_family(fmt: str) -> Family:
    try:
        return by_name(_BUILTIN_FAMILY.get(fmt, "generic"))
    except KeyError:
        return by_name("generic")


TOOL_DETAILS = ("full", "brief")


def load_template(chat_template: str, architecture: str = "", *, bos_token: str = "", eos_token: str = "",
                  chat_format: str = "", tool_format: str = "", tool_detail: str = "") -> Template:
    """Compile the model's template (or a built-in one) and choose its family.

    ``chat_format``: ``gguf`` (the model's own template), or one of turnout's
    built-in ones (gemma, chatml, llama3, mistral); default: the model's own when it
    has one, else gemma for Gemma architectures and chatml otherwise.
    ``tool_format``: a family name, to override detection. Raises ValueError for
    unknown names and :class:`TemplateError` for a template that does not parse.
    ``tool_detail``: how turnout describes tools where the template does not
    (``full`` or ``brief``); default: ``brief`` for a model with no template of its
    own (a base model), ``full`` otherwise."""
    if tool_detail and tool_detail not in TOOL_DETAILS:
        raise ValueError(f"tool_detail must be one of {', '.join(TOOL_DETAILS)}")
    if chat_format and chat_format not in CHAT_FORMATS:
        raise ValueError(f"chat_format must be one of {', '.join(CHAT_FORMATS)}")
    fmt = chat_format or ("gguf" if chat_template else "gemma" if architecture.startswith("gemma") else "chatml")
    if fmt == "gguf" and not chat_template:
        raise ValueError("chat_format = 'gguf' but the model has no chat template")
    source = chat_template if fmt == "gguf" else BUILTIN[fmt]
    if tool_format:
        try:
            family = by_name(tool_format)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
    else:
        family = detect(chat_template) if fmt == "gguf" else _builtin_family(fmt)
    compiled = je.compile_template(source)
    base = {"bos_token": bos_token, "eos_token": eos_token, "enable_thinking": False}
    caps = je.probe_caps(compiled, base) if fmt == "gguf" else Caps(tools=False, tool_calls=False, tool_role=False)
    stops = list(dict.fromkeys(s for s in (*family.stops, eos_token) if s))
    thinking_key = "message.thinking" in source or "message['thinking']" in source or 'message["thinking"]' in source
    detail = tool_detail or ("full" if chat_template else "brief")
    return Template(source, compiled, caps, family, fmt, bos_token, eos_token, stops, thinking_key, detail)


# ------------------------------------------------------------------ normalise


def _text_of(parts: list[Any]) -> str:
    out = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append(p.text)
        elif isinstance(p, ImagePart):
            out.append("[image]")  # text-only models: say that an image was there
    return "".join(out) if len(out) <= 1 else "\n\n".join(s for s in out if s)


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


def normalise(req: ChatRequest, tools_enabled: bool = True) -> list[dict[str, Any]]:
    """Canonical messages -> template message dicts (see the module docstring).

    Output roles: system (at most one, first), user, assistant (``content``,
    ``tool_calls`` with object arguments, ``reasoning_content``), tool
    (``content``, ``tool_call_id``, ``name``). Consecutive user (or assistant)
    turns are merged, since several templates insist on alternation."""
    system = join_text("\n\n".join(p.text for p in req.system if p.text), json_instruction(req))
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name, for tool results
    pending_system = ""  # a mid-conversation system entry with no user turn before it

    def add_user(text: str) -> None:
        nonlocal pending_system
        text = join_text(pending_system, text)
        pending_system = ""
        if out and out[-1]["role"] == "user":
            out[-1]["content"] = join_text(out[-1]["content"], text)
        else:
            out.append({"role": "user", "content": text})

    for msg in req.messages:
        if msg.role == "system":
            text = _text_of(msg.content)
            if not out:
                system = join_text(system, text)
            elif out[-1]["role"] == "user":
                out[-1]["content"] = join_text(out[-1]["content"], text)
            else:
                pending_system = join_text(pending_system, text)
            continue
        if msg.role == "assistant":
            text = "".join(p.text for p in msg.content if isinstance(p, TextPart))
            thought = "".join(p.thinking for p in msg.content if isinstance(p, ThinkingPart) and not p.redacted)
            calls = []
            for p in msg.content:
                if isinstance(p, ToolUsePart):
                    names[p.id] = p.name
                    calls.append({"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.input}})
            if out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
                out[-1]["content"] = join_text(out[-1]["content"], text)
                if thought:
                    out[-1]["reasoning_content"] = join_text(out[-1].get("reasoning_content", ""), thought)
                if calls:
                    out[-1]["tool_calls"] = calls
            else:
                d: dict[str, Any] = {"role": "assistant", "content": text}
                if thought:
                    d["reasoning_content"] = thought
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
                out.append({"role": "tool", "content": content, "tool_call_id": p.tool_use_id,
                            "name": names.get(p.tool_use_id, "")})
        text = _text_of([p for p in msg.content if isinstance(p, TextPart | ImagePart)])
        if text or not any(isinstance(p, ToolResultPart) for p in msg.content):
            add_user(text)
    if pending_system:
        add_user("")
    if system:
        out.insert(0, {"role": "system", "content": system})
    if not tools_enabled:
        # The client forbade tools (tool_choice none): show past calls as text.
        out = calls_as_text(out, by_name("generic"))
    return out


# ------------------------------------------------------------------ render


def _mistral_id(call_id: str, _i: int, _name: str) -> str:
    """Mistral's templates refuse ids that are not 9 alphanumerics."""
    h = hashlib.sha1(call_id.encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[b % len(alphabet)] for b in h[:9])


def _id_style(tpl: Template) -> Callable[[str, int, str], str] | None:
    src = tpl.source
    if "alphanumeric strings with length 9" in src or "[CALL_ID]" in src:
        return _mistral_id
    if "functions." in src and "<|tool_call_begin|>" in src:
        return lambda _id, i, name: f"functions.{name}:{i}"
    return None


def fit_messages(msgs: list[dict[str, Any]], tpl: Template,
                 tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The messages as this template can take them, and whether it describes
    ``tools`` (OpenAI-shaped specs) itself. Arguments of earlier calls may be
    objects or JSON strings."""
    caps, family = tpl.caps, tpl.family
    native_tools = bool(tools) and caps.tools
    if tools and not native_tools:
        text = tool_instructions(tools, family, brief=tpl.tool_detail == "brief")
        if msgs and msgs[0]["role"] == "system":
            msgs = [{**msgs[0], "content": join_text(msgs[0]["content"], text)}, *msgs[1:]]
        else:
            msgs = [{"role": "system", "content": text}, *msgs]
    if not (caps.tool_calls and caps.tool_role):
        msgs = calls_as_text(msgs, family)
    ids = _id_style(tpl)
    mapping: dict[str, str] = {}
    n = 0
    fixed: list[dict[str, Any]] = []
    for d in msgs:
        d = dict(d)
        if d.get("content") is None:
            d["content"] = ""  # templates concatenate it
        if d.get("tool_calls"):
            calls = []
            for c in d["tool_calls"]:
                fn = dict(c["function"])
                if not caps.object_arguments and not isinstance(fn["arguments"], str):
                    fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
                elif caps.object_arguments and isinstance(fn["arguments"], str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"] or "{}")
                    except ValueError:
                        pass  # not JSON: the template gets the text
                cid = c["id"]
                if ids is not None:
                    cid = mapping.setdefault(c["id"], ids(c["id"], n, fn["name"]))
                n += 1
                calls.append({**c, "id": cid, "function": fn})
            d["tool_calls"] = calls
        if d["role"] == "tool" and ids is not None and d.get("tool_call_id") in mapping:
            d["tool_call_id"] = mapping[d["tool_call_id"]]
        if tpl.message_thinking_key and d.get("reasoning_content"):
            d["thinking"] = d["reasoning_content"]
        fixed.append(d)
    msgs = fixed
    if not caps.system_role and msgs and msgs[0]["role"] == "system":
        system = msgs[0]["content"]
        msgs = msgs[1:]
        if msgs and msgs[0]["role"] == "user":
            msgs = [{**msgs[0], "content": join_text(system, msgs[0]["content"])}, *msgs[1:]]
        else:
            msgs = [{"role": "user", "content": system}, *msgs]
    if caps.typed_content:
        msgs = [{**d, "content": [{"type": "text", "text": d["content"]}]} if isinstance(d.get("content"), str)
                else d for d in msgs]
    return msgs, native_tools


def _effort(source: str, thinking: bool, budget: int) -> str:
    """``reasoning_effort`` for templates that take one (gpt-oss: low/medium/high;
    Hunyuan: no_think/low/high), from the request's thinking budget."""
    levels = [v for v in ("no_think", "low", "medium", "high") if f"'{v}'" in source or f'"{v}"' in source]
    levels = levels or ["low", "medium", "high"]
    if not thinking:
        return levels[0]
    want = "high" if budget >= 16000 else "medium" if budget >= 2000 or not budget else "low"
    return want if want in levels else levels[-1]


_PREFILL_MARK = "\u2063TURNOUT-PREFILL\u2063"


def render_messages(msgs: list[dict[str, Any]], tpl: Template, *, tools: list[dict[str, Any]] | None = None,
                    thinking: bool = False, thinking_budget: int = 0, now: datetime | None = None) -> str:
    """Run the template on fitted messages (:func:`fit_messages`). ``tools``: the
    OpenAI-shaped specs, passed only to a template that describes tools itself. A
    last assistant message without calls is a prefill: the prompt ends inside it."""
    now = now or datetime.now()
    ctx: dict[str, Any] = {
        "bos_token": tpl.bos_token,
        "eos_token": tpl.eos_token,
        "enable_thinking": thinking,
        "date_string": now.strftime("%d %b %Y"),
        "datetime": now.strftime("%b %d %Y"),
        "strftime_now": now.strftime,
    }
    if "reasoning_effort" in tpl.source:
        ctx["reasoning_effort"] = _effort(tpl.source, thinking, thinking_budget)
    if tools and tpl.caps.tools:
        ctx["tools"] = tools
        ctx["functions"] = json.dumps([s["function"] for s in tools], ensure_ascii=False, indent=2)
    last = msgs[-1] if msgs else {}
    if last.get("role") == "assistant" and not last.get("tool_calls") and isinstance(last.get("content"), str):
        # The client wrote the start of the answer (its reasoning, or its text):
        # render the turn with a mark where it stops, and end the prompt there.
        key = "content" if last["content"] or not last.get("reasoning_content") else "reasoning_content"
        marked = {**last, key: last[key] + _PREFILL_MARK}
        if key == "reasoning_content" and tpl.message_thinking_key:
            marked["thinking"] = marked[key]
        full = je.render(tpl.compiled, messages=[*msgs[:-1], marked], add_generation_prompt=False, **ctx)
        cut = full.rfind(_PREFILL_MARK)
        if cut >= 0:
            return full[:cut]
        # the template dropped it: the prefill follows the generation prompt
        return je.render(tpl.compiled, messages=msgs[:-1], add_generation_prompt=True, **ctx) + last["content"]
    return je.render(tpl.compiled, messages=msgs, add_generation_prompt=True, **ctx)


def render(req: ChatRequest, tpl: Template, *, now: datetime | None = None) -> Rendered:
    """The prompt for ``req`` (ending where the assistant's answer starts)."""
    from turnout.workers.formats import reasoning_open

    choice = req.tool_choice.type if req.tool_choice else "auto"
    tools_enabled = bool(req.tools) and choice != "none"
    specs = tool_specs(req.tools) if tools_enabled else []
    msgs, _ = fit_messages(normalise(req, tools_enabled), tpl, specs)
    thinking = req.thinking is not None and req.thinking.type != "disabled"
    budget = req.thinking.budget_tokens if req.thinking is not None else 0
    prompt = render_messages(msgs, tpl, tools=specs, thinking=thinking, thinking_budget=budget, now=now)
    return Rendered(prompt, list(tpl.stops), tpl.family, tools_enabled, reasoning_open(tpl.family, prompt),
                    ToolSet(specs), req.response_format is not None)
