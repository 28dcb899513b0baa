"""``turnout mcp``: the MCP server over stdio, forwarding to the running gateway's
/mcp (gateway/mcp/stdio.py)."""

from __future__ import annotations

import argparse

from turnout.cli.common import Lazy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mcp", help="the MCP server over stdio (forwards to the running gateway's /mcp)")
    p.add_argument("--config", help="config file, to find the gateway's port")
    p.add_argument("--port", type=int, help="the gateway's port (default: the config's, else 8765)")
    p.set_defaults(func=Lazy("turnout.gateway.mcp.stdio", "cmd_mcp"))
