"""``/mcp`` on the gateway: the SDK's Streamable HTTP session manager served by aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from turnout.gateway.errors import ApiError
from turnout.gateway.mcp.server import build_server
from turnout.gateway.routing import BUS

# ---------------------------------------------------------------- bookkeeping


@dataclass
class McpState:
    """What the MCP tools share inside one gateway: the SDK server and its HTTP
    session manager (the tool_use index and the usage ledger are the router's
    telemetry, kept whether MCP is on or off)."""

    server: Any
    manager: Any


MCP: web.AppKey[McpState] = web.AppKey("mcp", McpState)


# --------------------------------------------------------- ASGI on aiohttp


def asgi_handler(asgi_app: Callable[[dict[str, Any], Any, Any], Awaitable[None]]) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler running an ASGI 3 HTTP app for one request.

    The body is read whole first (MCP messages are small, and aiohttp's
    ``client_max_size`` bounds it); after it, ``receive`` blocks until the handler
    is cancelled (the client went away), which is what an ASGI app expects of a
    connection that has nothing more to say. The response streams: SSE works."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        sent_body = False
        resp: web.StreamResponse | None = None
        forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await forever  # cancelled with the handler
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal resp
            if msg["type"] == "http.response.start":
                resp = web.StreamResponse(status=msg["status"])
                for k, v in msg.get("headers", []):
                    resp.headers.add(k.decode("latin-1"), v.decode("latin-1"))
                await resp.prepare(request)
            elif msg["type"] == "http.response.body":
                assert resp is not None, "ASGI app sent a body before its start"
                chunk = msg.get("body", b"")
                if chunk:
                    await resp.write(chunk)
                if not msg.get("more_body", False):
                    await resp.write_eof()

        peer = request.transport.get_extra_info("peername") if request.transport else None
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": f"{request.version.major}.{request.version.minor}",
            "method": request.method, "scheme": request.scheme, "path": request.path,
            "raw_path": request.raw_path.split("?", 1)[0].encode(), "root_path": "",
            "query_string": request.query_string.encode(),
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "client": tuple(peer[:2]) if peer else None, "server": tuple(sock[:2]) if sock else None,
            "state": {},
        }
        try:
            await asgi_app(scope, receive, send)
        finally:
            if not forever.done():
                forever.cancel()
        if resp is None:
            raise ApiError(500, "the MCP server sent no response")
        return resp

    return handle


def register(app: web.Application) -> None:
    """Serve the MCP server at ``/mcp`` on ``app`` (if ``[mcp] enabled``).

    The SDK's session manager must enter and leave its task group in one task, so
    it runs in a task of its own for the app's life. Stateless and JSON answers:
    nothing is kept between requests, so a restarted gateway serves a client that
    connected to the previous one without a new handshake."""
    cfg = app[BUS].config
    if not cfg.mcp.enabled:
        return
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    server = build_server(app)
    manager = StreamableHTTPSessionManager(app=server._lowlevel_server, json_response=True, stateless=True,
                                           max_request_body_size=4 * 2**20)
    state = McpState(server, manager)
    app[MCP] = state

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        started = asyncio.Event()
        stop = asyncio.Event()

        async def run() -> None:
            async with manager.run():
                started.set()
                await stop.wait()

        task = asyncio.create_task(run())
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()  # raises what failed
        yield
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)

    app.cleanup_ctx.append(lifecycle)
    handler = asgi_handler(manager.handle_request)
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, "/mcp", handler)
