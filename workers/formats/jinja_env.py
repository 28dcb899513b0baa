"""The Jinja environment chat templates run in, and what a template can do.

Chat templates come from GGUF files, so they run sandboxed (``SandboxedEnvironment``:
no attribute access outside the safe set). Beyond plain Jinja they rely on what
Hugging Face's ``apply_chat_template`` and llama.cpp's own Jinja engine provide:

* ``raise_exception(msg)`` (the template refuses the conversation:
  :class:`TemplateError`), ``strftime_now(fmt)``, the ``{% generation %}`` block
  (Hugging Face's assistant-mask marker: rendered as its body), loop controls,
  ``namespace``;
* ``tojson`` of any value (generators and Jinja undefined included), with
  ``indent``, ``ensure_ascii``, ``separators`` and ``sort_keys``;
* list mutation (``list.append``), which several templates use to collect
  messages (the sandbox still refuses every unsafe attribute);
* a lenient undefined: ``'x' + undefined_var`` is ``'x'``, as in llama.cpp's engine.

:func:`probe_caps` renders probe conversations to learn how a template wants its
input (system role, tools, tool calls with object or string arguments, typed
content), the way llama.cpp's ``caps_get`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import SandboxedEnvironment


class TemplateError(Exception):
    """The model's chat template refused the conversation (or is broken)."""


class _Lenient(jinja2.Undefined):
    """Undefined that behaves as an empty value in expressions (llama.cpp's engine
    does the same); attribute access on it stays undefined."""

    def __add__(self, other: Any) -> Any:
        return other

    def __radd__(self, other: Any) -> Any:
        return other


class GenerationExtension(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: Hugging Face marks the assistant's
    own tokens with it (for training masks); rendering keeps the body as is."""

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it on the base class)

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _plain(value: Any) -> Any:
    """A JSON-encodable copy of what a template holds."""
    if isinstance(value, jinja2.Undefined):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Iterable):
        return [_plain(v) for v in value]
    return str(value)


def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
           separators: Any = None, sort_keys: bool = False, **_: Any) -> str:
    if separators is not None:
        separators = tuple(separators)
    return json.dumps(_plain(value), indent=indent, ensure_ascii=ensure_ascii,
                      separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise TemplateError(message)


def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        undefined=_Lenient,
        extensions=[jinja2.ext.loopcontrols, jinja2.ext.do, GenerationExtension],
    )
    env.filters["tojson"] = tojson
    # No autoescape here: `safe` must not turn strings into Markup, whose `+`
    # would HTML-escape the other operand (functionary's template does that).
    env.filters["safe"] = str
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def compile_template(source: str) -> jinja2.Template:
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template does not parse: {e.message} (line {e.lineno})") from None


def render(template: jinja2.Template, **context: Any) -> str:
    try:
        return str(template.render(**context))
    except TemplateError:
        raise
    except Exception as e:  # jinja2 errors from a template we did not write
        raise TemplateError(f"{type(e).__name__}: {e}") from None


# ------------------------------------------------------------------ caps


@dataclass(slots=True, frozen=True)
class Caps:
    """How a template wants its input (found by :func:`probe_caps`)."""

    system_role: bool = True  # renders a system message, before the conversation
    tools: bool = True  # describes the tools it is given
    tool_calls: bool = True  # writes assistant tool_calls from history
    object_arguments: bool = False  # tool_calls[].function.arguments as an object (else a JSON string)
    typed_content: bool = False  # content as a list of {"type": "text", "text": …} parts only
    tool_role: bool = True  # renders role "tool" messages


_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool_fn",
        "description": "Tool description",
        "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}, "required": ["probe_arg"]},
    },
}


def _probe_history(args: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call00001", "type": "function", "function": {"name": "probe_tool_fn", "arguments": args}}]},
        {"role": "tool", "content": "PROBE_TOOL_RESULT", "tool_call_id": "call00001", "name": "probe_tool_fn"},
        {"role": "assistant", "content": "The tool response was 'tool response'"},
        {"role": "user", "content": "User message"},
    ]


def probe_caps(template: jinja2.Template, base: Mapping[str, Any]) -> Caps:
    def attempt(messages: list[dict[str, Any]], **kw: Any) -> str | None:
        try:
            return render(template, messages=messages, add_generation_prompt=True, **{**base, **kw})
        except TemplateError:
            return None

    typed = False
    plain = attempt([{"role": "user", "content": "STRING_MARKER"}])
    if plain is None or "STRING_MARKER" not in plain:
        parts = attempt([{"role": "user", "content": [{"type": "text", "text": "STRING_MARKER"}]}])
        typed = parts is not None and "STRING_MARKER" in parts
    # A system message must come out first: templates that move it into the last
    # user turn (Mistral's) lose it when the conversation ends with tool results,
    # and change the prompt's prefix every turn (no KV-cache reuse).
    sysout = attempt([{"role": "system", "content": "SYSTEM_MARKER"}, {"role": "user", "content": "FIRST_USER"},
                      {"role": "assistant", "content": "ANSWER"}, {"role": "user", "content": "SECOND_USER"}])
    system_role = sysout is not None and "SYSTEM_MARKER" in sysout and (
        sysout.index("SYSTEM_MARKER") < sysout.index("FIRST_USER") if "FIRST_USER" in sysout else True)
    obj = attempt(_probe_history({"probe_arg": "PROBE_VALUE"}), tools=[_PROBE_TOOL])
    object_arguments = obj is not None and "PROBE_VALUE" in obj and "probe_arg" in obj
    out = obj if object_arguments else attempt(_probe_history('{"probe_arg": "PROBE_VALUE"}'), tools=[_PROBE_TOOL])
    if out is None:
        return Caps(system_role, False, False, False, typed, False)
    described = attempt([{"role": "user", "content": "User message"}], tools=[_PROBE_TOOL])
    tools = described is not None and "probe_tool_fn" in described
    tool_calls = out.count("probe_tool_fn") > (1 if tools else 0) or (not tools and "probe_tool_fn" in out)
    return Caps(system_role, tools, tool_calls, object_arguments, typed, "PROBE_TOOL_RESULT" in out)
