"""The MCP browser tools (issue 18): ``browser_navigate``, ``browser_snapshot``,
``browser_click``, ``browser_type``, ``browser_select``, ``browser_press``,
``browser_wait_for``, ``browser_screenshot``, ``browser_evaluate`` (offered only
with ``[browser] evaluate = true``), ``browser_tabs``, ``browser_close``.

Each call is a ``Job`` with ``BrowserParams`` for the ``browser`` worker (loaded on
the first call, like the media models), which drives a headless Chromium
(workers/browser.py). The MCP session is the browser session: every client gets its
own browser context (cookies, storage, tabs; see :func:`session_key`). The ``[browser]`` settings ride along
with each job, as the media limits do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from aiohttp import web
from mcp.server.mcpserver import Context, Image
from pydantic import Field

from turnout.gateway.appkeys import BUS
from turnout.gateway.errors import ApiError
from turnout.gateway.mcp.switching import SESSION_HEADER, TOOL_USE_META, ToolFailure
from turnout.gateway.media.common import job_outputs
from turnout.gateway.routing import ROUTER
from turnout.protocol import messages as m
from turnout.protocol.config import ModelConfig

RefArg = Annotated[str, Field(description="the element's ref from the last browser_snapshot, such as 'e3'")]


def browser_model(app: web.Application) -> ModelConfig:
    for mc in app[BUS].config.models:
        if mc.backend == "browser":
            return mc
    raise ToolFailure("the browser tools are off: [browser] enabled = false in turnout's config")


def session_key(app: web.Application, ctx: Context | None) -> str:
    """The browser session a call belongs to: its Claude Code conversation (the
    session header ``turnout mcp`` and Claude Code send, else the conversation whose
    answer held the call's tool_use id), or the MCP session id when the transport has
    one. /mcp is stateless (no MCP session id), so a client that sends none of these
    shares one browser context ("default") with the others that do not."""
    headers = None
    try:
        headers = ctx.headers if ctx is not None else None
    except (ValueError, AttributeError):
        headers = None
    if headers is not None:
        sid = headers.get(SESSION_HEADER) or headers.get(SESSION_HEADER.lower())
        if sid:
            return f"cc:{sid}"
    try:
        meta = getattr(ctx.request_context, "meta", None) if ctx is not None else None
    except (ValueError, AttributeError):
        meta = None
    tuid = meta.get(TOOL_USE_META) if isinstance(meta, dict) else None
    router = app.get(ROUTER)
    if isinstance(tuid, str) and router is not None:
        sid = router.telemetry.tool_uses.get(tuid)
        if sid:
            return f"cc:{sid}"
    mcp_sid = headers.get("mcp-session-id") if headers is not None else None
    return f"mcp:{mcp_sid}" if mcp_sid else "default"


async def run_action(app: web.Application, ctx: Context | None, action: m.BrowserAction,
                     **fields: Any) -> tuple[str, bytes | None]:
    """Send one action to the browser worker; its text, and a PNG for a screenshot.
    A failure is the tool's error, with the worker's message."""
    bus = app[BUS]
    bc = bus.config.browser
    mc = browser_model(app)
    timeout = float(fields.pop("timeout_s", 0) or bc.action_timeout_s)
    params = m.BrowserParams(action=action, session=session_key(app, ctx), timeout_s=timeout, allow=list(bc.allow),
                             evaluate=bc.evaluate, executable=bc.executable, max_sessions=bc.max_sessions, **fields)
    text, png = "", None
    try:
        st = await bus.open_job(mc, params, [])
        async for out, frames in job_outputs(st):
            text += out.text
            if out.media_type == "image/png" and frames:
                png = b"".join(bytes(f.buffer) for f in frames)
    except ApiError as e:
        raise ToolFailure(e.message) from None
    return text, png


def register_browser_tools(app: web.Application, add: Callable[..., None]) -> None:
    """Add the browser tools to the MCP server (``add`` is build_server's helper).
    Their answers are text for the model (a page snapshot), not structured data."""

    def tool(fn: Callable[..., Any], description: str, read_only: bool = True) -> None:
        add(fn, description, read_only=read_only, structured=False)

    async def browser_navigate(ctx: Context, url: Annotated[str, Field(
            description="the address to open (http or https)")]) -> str:
        return (await run_action(app, ctx, "navigate", url=url))[0]

    async def browser_snapshot(ctx: Context) -> str:
        return (await run_action(app, ctx, "snapshot"))[0]

    async def browser_click(ctx: Context, ref: RefArg) -> str:
        return (await run_action(app, ctx, "click", ref=ref))[0]

    async def browser_type(ctx: Context, ref: RefArg, text: Annotated[str, Field(
            description="the text; it replaces what the field holds")],
            submit: Annotated[bool, Field(description="press Enter after typing")] = False) -> str:
        return (await run_action(app, ctx, "type", ref=ref, text=text, submit=submit))[0]

    async def browser_select(ctx: Context, ref: RefArg, values: Annotated[list[str], Field(
            description="the option(s) to select, by value or visible label", min_length=1)]) -> str:
        return (await run_action(app, ctx, "select", ref=ref, values=values))[0]

    async def browser_press(ctx: Context, key: Annotated[str, Field(
            description="a key: Enter, Tab, Escape, Backspace, ArrowDown, PageDown, a character, or a combination "
                        "such as Control+a")],
            ref: Annotated[str, Field(description="focus this element first (empty: where the focus is)")] = ""
            ) -> str:
        return (await run_action(app, ctx, "press", key=key, ref=ref))[0]

    async def browser_wait_for(ctx: Context, text: Annotated[str, Field(
            description="wait until the page shows this text")] = "",
            text_gone: Annotated[str, Field(description="or until this text is gone")] = "",
            timeout_s: Annotated[float, Field(description="how long to wait at most (0: [browser] "
                                                          "action_timeout_s)", ge=0, le=600)] = 0) -> str:
        return (await run_action(app, ctx, "wait_for", text=text, text_gone=text_gone, timeout_s=timeout_s))[0]

    async def browser_screenshot(ctx: Context, full_page: Annotated[bool, Field(
            description="the whole page, not only the visible part")] = False) -> Image:
        _, png = await run_action(app, ctx, "screenshot", full_page=full_page)
        if png is None:
            raise ToolFailure("the browser worker sent no image")
        return Image(data=png, format="png")

    async def browser_evaluate(ctx: Context, expression: Annotated[str, Field(
            description="a JavaScript expression, run in the page; a promise is awaited")]) -> str:
        return (await run_action(app, ctx, "evaluate", expression=expression))[0]

    async def browser_tabs(ctx: Context, action: Literal["list", "new", "select", "close"] = "list",
                           index: Annotated[int, Field(description="the tab, for select and close (from list)")] = -1,
                           url: Annotated[str, Field(description="new: the address to open in it")] = "") -> str:
        return (await run_action(app, ctx, "tabs", tab_action=action, tab=index, url=url))[0]

    async def browser_close(ctx: Context) -> str:
        return (await run_action(app, ctx, "close"))[0]

    tool(browser_navigate, "Open a URL in this session's browser tab (a headless Chromium run by turnout) and "
                           "answer the page as an accessibility snapshot: one line per element, with refs (e3) "
                           "for browser_click, browser_type and browser_select.", read_only=False)
    tool(browser_snapshot, "The current page as an accessibility snapshot: roles, names, values and states, one "
                           "element a line, each with a ref for the other browser tools. Refs last until the page "
                           "navigates.")
    tool(browser_click, "Click the element with this ref (from the last snapshot); answers the page afterwards.",
         read_only=False)
    tool(browser_type, "Type text into the field with this ref, replacing its content (submit=true presses "
                       "Enter after); answers the page afterwards.", read_only=False)
    tool(browser_select, "Choose option(s) of the <select> with this ref, by value or label; answers the page "
                         "afterwards.", read_only=False)
    tool(browser_press, "Press a key (Enter, Tab, Escape, ArrowDown, a letter, Control+a...) in the page, on the "
                        "element with this ref if given; answers the page afterwards.", read_only=False)
    tool(browser_wait_for, "Wait until a text appears on the page (or text_gone disappears), then answer the page.")
    tool(browser_screenshot, "A PNG screenshot of the current page (the visible part, or full_page).")
    if app[BUS].config.browser.evaluate:
        tool(browser_evaluate, "Run a JavaScript expression in the current page and answer its value as JSON.",
             read_only=False)
    tool(browser_tabs, "List this session's browser tabs, open a new one (with a url), switch to one, or close "
                       "one.", read_only=False)
    tool(browser_close, "Close this session's browser: its tabs, cookies and storage.", read_only=False)
