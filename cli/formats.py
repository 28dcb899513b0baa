"""``turnout formats list|parse|render``: the chat formats turnout reads
(the commands themselves: cli/formats_impl.py)."""

from __future__ import annotations

import argparse

from turnout.cli.common import Lazy

IMPL = "turnout.cli.formats_impl"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("formats", help="chat formats: list them, render a prompt, parse a model's output")
    fs = p.add_subparsers(dest="formats_command", required=True)
    ls = fs.add_parser("list", help="the families turnout reads (tool_format names)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=Lazy(IMPL, "cmd_list"))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--template", required=True, help="a Jinja chat template file, or a .gguf")
    common.add_argument("--tool-format", default="", help="read as this family instead of the detected one")
    common.add_argument("-v", "--verbose", action="store_true", help="also say which family and state was used")
    pa = fs.add_parser("parse", parents=[common], help="read a model's raw output (stdin) as turnout does; print JSON")
    pa.add_argument("--tools", help="a JSON list of Anthropic tool definitions")
    pa.add_argument("--thinking", action="store_true", help="the request asked for thinking")
    pa.set_defaults(func=Lazy(IMPL, "cmd_parse"))
    re_ = fs.add_parser("render", parents=[common], help="print the prompt turnout writes for a request")
    re_.add_argument("--request", required=True, help="a request body (Anthropic Messages, or --api openai)")
    re_.add_argument("--api", choices=["anthropic", "openai"], default="anthropic")
    re_.set_defaults(func=Lazy(IMPL, "cmd_render"))
