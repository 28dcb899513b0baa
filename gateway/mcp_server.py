"""Where the CLI's plugin list (supervisor/cli.py) finds ``turnout mcp`` and
``turnout claude`` until the cli/ package replaces it. The MCP server itself is
the gateway/mcp/ package."""

from __future__ import annotations

from typing import Any

from gateway.mcp.stdio import cmd_mcp, serve_stdio

__all__ = ["cmd_mcp", "register_cli", "serve_stdio"]


def register_cli(sub: Any) -> None:
    from gateway import claude_setup
    from gateway.mcp import stdio

    stdio.register_cli(sub)
    claude_setup.register_cli(sub)
