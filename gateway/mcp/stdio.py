"""``turnout mcp``: the MCP server over stdio, a thin proxy to the running gateway's ``/mcp``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from turnout.gateway.mcp.switching import SESSION_HEADER
from turnout.protocol.config import gateway_url


async def serve_stdio(url: str, token: str) -> None:
    """An MCP server on stdin/stdout whose tools are the gateway's: every list and
    call is forwarded to ``url``/mcp with the token (and, if Claude Code spawned us,
    its session id), so stdio clients get exactly the same tools."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.exceptions import MCPError
    from mcp_types import INTERNAL_ERROR, CallToolResult, ErrorData, ListToolsResult, TextContent

    headers = {"Authorization": f"Bearer {token}"}
    sid = os.environ.get("CLAUDE_CODE_SESSION_ID")
    if sid:
        headers[SESSION_HEADER] = sid

    @contextlib.asynccontextmanager
    async def remote() -> AsyncIterator[Any]:
        # One connection per forwarded request, opened and closed in the handler's
        # own task (the SDK's task groups must be left where they were entered);
        # a handshake on localhost costs a few ms, and tool calls are rare. It
        # also makes a restarted gateway a non-event.
        async with create_mcp_http_client(headers=headers, timeout=httpx2.Timeout(30.0, read=600.0)) as http:
            async with Client(streamable_http_client(url + "/mcp", http_client=http)) as c:
                yield c

    def unreachable(e: BaseException) -> str:
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        return (f"turnout is not reachable at {url} ({type(e).__name__}: {e}); start it with `turnout up` "
                f"or set TURNOUT_URL")

    async def on_list_tools(ctx: Any, params: Any) -> ListToolsResult:
        try:
            async with remote() as c:
                return ListToolsResult(tools=list((await c.list_tools()).tools))
        except Exception as e:
            raise MCPError.from_error_data(ErrorData(code=INTERNAL_ERROR, message=unreachable(e))) from None

    async def on_call_tool(ctx: Any, params: Any) -> CallToolResult:
        meta = dict(params.meta) if getattr(params, "meta", None) else None
        try:
            async with remote() as c:
                res: CallToolResult = await c.call_tool(params.name, params.arguments or {}, meta=meta)
                return res
        except Exception as e:
            return CallToolResult(content=[TextContent(type="text", text=unreachable(e))], is_error=True)

    server: Any = Server("turnout", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def cmd_mcp(args: Any) -> int:
    from turnout.gateway.auth import load_or_create_token

    try:
        token = load_or_create_token()
        url = gateway_url(args.port, args.config)
    except Exception as e:  # a bad config or keyring: say it on stderr (stdout is the protocol)
        print(f"turnout mcp: {e}", file=sys.stderr)
        return 2
    import anyio

    anyio.run(serve_stdio, url, token)
    return 0
