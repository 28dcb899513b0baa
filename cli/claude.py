"""``turnout claude setup | remove | [CLAUDE ARGS...]``: Claude Code pointed at turnout
(gateway/claude_setup.py)."""

from __future__ import annotations

import argparse

from cli.common import load


def cmd_claude(args: argparse.Namespace) -> int:
    impl = load("gateway.claude_setup", "claude")
    # Everything after turnout's own options is claude's (argparse's REMAINDER does
    # not take a first argument that looks like an option: `turnout claude -p hi`).
    args.claude_args = impl.claude_argv(args.argv)
    return int(impl._dispatch(args) or 0)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("claude", help="Claude Code: `setup` (settings + MCP), `remove`, or run claude via turnout",
                       description="turnout claude setup | remove | [CLAUDE ARGS...]")
    p.add_argument("--config", help="turnout config file")
    p.add_argument("--port", type=int, help="turnout's port (default: the config's, else 8765)")
    p.add_argument("--url", help="turnout's base URL (default: http://HOST:PORT from the config)")
    p.add_argument("claude_args", nargs=argparse.REMAINDER, help="setup | remove | arguments for claude")
    p.set_defaults(func=cmd_claude, wants_argv=True)
