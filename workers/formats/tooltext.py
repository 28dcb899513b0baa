"""Tools written into a prompt as text, for templates that cannot take them: the
system-prompt text that offers them (as JSON specs, or a line each for a base
model: :func:`brief_tool_lines`), and earlier calls and results as plain text in
the family's own call format."""

from __future__ import annotations

import json
from typing import Any

from turnout.protocol.chat import Tool
from turnout.workers.formats.families import Family, by_name


def join_text(a: str, b: str) -> str:
    return b if not a else a if not b else f"{a}\n\n{b}"


def tool_specs(tools: list[Tool]) -> list[dict[str, Any]]:
    """Tools in the OpenAI function shape templates expect."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description,
                                          "parameters": t.input_schema or {"type": "object", "properties": {}}}}
        for t in tools
    ]


BRIEF_DESCRIPTION_CHARS = 160


def _type_name(schema: Any, depth: int = 0) -> str:
    if not isinstance(schema, dict) or depth > 3:
        return "any"
    if "enum" in schema and isinstance(schema["enum"], list):
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"][:6])
    t = schema.get("type")
    if isinstance(t, list):
        return "|".join(str(x) for x in t)
    if t == "array":
        return f"array of {_type_name(schema.get('items'), depth + 1)}"
    return str(t) if t else "any"


def brief_tool_lines(specs: list[dict[str, Any]]) -> list[str]:
    """One line a tool: ``name(arg: type, optional?: type): first sentence``.

    What a base model gets by default (:class:`Template.tool_detail`): Claude Code's
    24 tools are ~17k tokens as JSON specs, 87% of its prompt, minutes of prefill on
    a CPU for a model that has learnt no tool format; a line each is ~1k. Calls are
    still read, and forced by grammar, against the full schemas."""
    out = []
    for s in specs:
        fn = s["function"]
        params = fn.get("parameters")
        params = params if isinstance(params, dict) else {}
        props = params.get("properties")
        props = props if isinstance(props, dict) else {}
        required = params.get("required")
        required = {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
        args = ", ".join(f"{k}{'' if k in required else '?'}: {_type_name(v)}" for k, v in props.items())
        desc = " ".join(str(fn.get("description") or "").split())
        for end in (". ", ".\n"):
            if end in desc:
                desc = desc[: desc.index(end) + 1]
                break
        if len(desc) > BRIEF_DESCRIPTION_CHARS:
            desc = desc[: BRIEF_DESCRIPTION_CHARS - 1].rstrip() + "…"
        out.append(f"- {fn['name']}({args})" + (f": {desc}" if desc else ""))
    return out


def tool_instructions(specs: list[dict[str, Any]], family: Family, *, brief: bool = False) -> str:
    """The system-prompt text that offers ``specs`` (tools in the OpenAI shape) to a
    template that does not describe tools itself, asking for calls in the family's
    own format: the JSON specs, or a line each when ``brief``."""
    lines = "\n".join(brief_tool_lines(specs) if brief else (json.dumps(s, ensure_ascii=False) for s in specs))
    example = (family.forced_call or by_name("generic").forced_call or (lambda n, a: ""))(
        "<tool name>", '{"<argument>": "<value>"}')
    return (
        "# Tools\n\nYou may call one or more of these tools to answer:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "To call a tool, write the call and nothing after it, exactly in this form:\n"
        f"{example}"
    )


def _call_text(call: dict[str, Any], family: Family) -> str:
    fn = call["function"]
    args = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"], ensure_ascii=False)
    writer = family.forced_call or by_name("generic").forced_call
    assert writer is not None
    return writer(fn["name"], args)


def calls_as_text(msgs: list[dict[str, Any]], family: Family) -> list[dict[str, Any]]:
    """Earlier calls and results as plain text, for templates with no tool roles."""
    out: list[dict[str, Any]] = []
    for d in msgs:
        if d["role"] == "tool":
            name = d.get("name") or "tool"
            d = {"role": "user", "content": f"[result of {name}]\n{d['content']}"}
        elif d.get("tool_calls"):
            calls = "\n".join(_call_text(c, family) for c in d["tool_calls"])
            d = {k: v for k, v in d.items() if k != "tool_calls"}
            d["content"] = join_text(d.get("content") or "", calls)
        if out and d["role"] == out[-1]["role"] and d["role"] in ("user", "assistant"):
            out[-1] = {**out[-1], "content": join_text(out[-1]["content"], d["content"])}
        else:
            out.append(d)
    return out
