"""Which browser session an MCP browser call belongs to (gateway/mcp/browser.py):
driven end to end in tests/e2e/test_browser_tools.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import web

from turnout.gateway.mcp.browser import session_key


def ctx(headers: dict[str, str] | None, meta: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(headers=headers, request_context=SimpleNamespace(meta=meta))


def test_the_conversation_header_names_the_session() -> None:
    app = web.Application()
    assert session_key(app, ctx({"X-Claude-Code-Session-Id": "abc"})) == "cc:abc"
    assert session_key(app, ctx({"x-claude-code-session-id": "abc"})) == "cc:abc"


def test_an_mcp_session_id_names_one_when_there_is_no_conversation() -> None:
    assert session_key(web.Application(), ctx({"mcp-session-id": "s1"})) == "mcp:s1"


def test_a_client_that_says_nothing_shares_the_default_context() -> None:
    app = web.Application()
    assert session_key(app, ctx({})) == "default"
    assert session_key(app, ctx(None)) == "default"
    assert session_key(app, None) == "default"
    # a tool_use id nobody has seen (no router here) names no conversation
    assert session_key(app, ctx({}, {"claudecode/toolUseId": "toolu_1"})) == "default"
