"""``turnout formats``: see how turnout writes prompts for a chat template and reads
a model's raw output, for users whose model misbehaves.

    turnout formats list
    turnout formats parse --template FILE [--tools TOOLS.json] [--thinking] [--tool-format NAME]  < output.txt
    turnout formats render --template FILE --request REQUEST.json [--tool-format NAME]

``--template``: a Jinja chat template file, or a GGUF (its ``tokenizer.chat_template``;
a GGUF without one gets turnout's built-in template for its architecture).
``TOOLS.json``: a list of Anthropic tool definitions (``name``, ``description``,
``input_schema``). ``REQUEST.json``: an Anthropic Messages request body (also a
captured request ``{"method", "path", "headers", "body"}``), or an OpenAI Chat
Completions body with ``--api openai``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _template(path: str, tool_format: str) -> Any:
    from turnout.workers import chat_templates as ct

    p = Path(path)
    if not p.exists():
        raise SystemExit(f"turnout formats: no such file: {path}")
    template, arch, bos, eos = "", "", "", ""
    if p.suffix == ".gguf":
        from turnout.protocol.modelfiles import ModelError, gguf_info

        try:
            info = gguf_info(p)
        except ModelError as e:
            raise SystemExit(f"turnout formats: {e}") from None
        template, arch = info.chat_template, info.architecture
    else:
        template = p.read_text()
    try:
        return ct.detect(template, arch, bos_token=bos, eos_token=eos, tool_format=tool_format)
    except ValueError as e:
        raise SystemExit(f"turnout formats: {e}") from None


def _tools(path: str | None) -> list[Any]:
    from turnout.protocol.chat import Tool

    if not path:
        return []
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"turnout formats: --tools {path}: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("tools"), list):
        raw = raw["tools"]
    if not isinstance(raw, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in raw):
        raise SystemExit("turnout formats: --tools must hold a list of Anthropic tool definitions "
                         '({"name", "description", "input_schema"})')
    return [Tool(t["name"], t.get("description", ""), t.get("input_schema") or {}) for t in raw]


def cmd_list(args: argparse.Namespace) -> int:
    from turnout.workers.formats import registry

    fams = list(registry().values())
    if args.json:
        print(json.dumps([{"name": f.name, "title": f.title, "templates": list(f.examples)} for f in fams], indent=2))
        return 0
    width = max(len(f.name) for f in fams)
    for f in fams:
        print(f"{f.name:<{width}}  {f.title}")
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    from turnout.protocol.chat import ChatRequest, Message, TextPart, ThinkingConfig, Tool
    from turnout.workers import chat_templates as ct
    from turnout.workers.formats.events import Call, Text, Thinking

    tpl = _template(args.template, args.tool_format)
    tools: list[Tool] = _tools(args.tools)
    req = ChatRequest(model="m", max_tokens=1, tools=tools, messages=[Message("user", [TextPart("hi")])],
                      thinking=ThinkingConfig("enabled" if args.thinking else "disabled", 1024 if args.thinking else 0))
    rendered = ct.render(req, tpl)
    if tools:
        reader = rendered.new_reader()
    else:  # no --tools: read calls of any name (a bare JSON answer stays text)
        from turnout.workers.formats.schema import ToolSet

        reader = rendered.family.new_reader(ToolSet(), reasoning_open=rendered.reasoning_open, tools_enabled=True)
    output = sys.stdin.read()
    events = reader.feed(output) + reader.finish()
    result = {
        "content": "".join(e.text for e in events if isinstance(e, Text)),
        "reasoning": "".join(e.text for e in events if isinstance(e, Thinking)),
        "tool_calls": [{"name": e.name, "arguments": json.loads(e.arguments)} for e in events if isinstance(e, Call)],
    }
    if args.verbose:
        result["tool_format"] = rendered.family.name
        result["reasoning_open"] = rendered.reasoning_open
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def _request(path: str, api: str) -> Any:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"turnout formats: --request {path}: {e}") from None
    if isinstance(body, dict) and isinstance(body.get("body"), dict) and "method" in body:
        body = body["body"]  # a captured request
    raw = json.dumps(body).encode()
    try:
        if api == "openai":
            from turnout.gateway.openai_chat import parse_chat

            return parse_chat(raw)[0]
        from turnout.gateway.anthropic import parse_messages

        return parse_messages(raw)
    except Exception as e:  # the gateway's own validation error: say which field
        raise SystemExit(f"turnout formats: --request {path}: {getattr(e, 'message', e)}") from None


def cmd_render(args: argparse.Namespace) -> int:
    from turnout.workers import chat_templates as ct

    tpl = _template(args.template, args.tool_format)
    req = _request(args.request, args.api)
    try:
        rendered = ct.render(req, tpl)
    except ct.TemplateError as e:
        print(f"turnout formats: the template refused the conversation: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(rendered.prompt)
    if args.verbose:
        print(f"\n--- tool_format: {rendered.family.name}; stops: {rendered.stop}; "
              f"reasoning open: {rendered.reasoning_open!r}", file=sys.stderr)
    return 0
