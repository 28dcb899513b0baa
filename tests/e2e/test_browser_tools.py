"""The MCP browser tools end to end (issue 18): a real turnout (the fake model; the
browser worker loads on the first browser call) driven through /mcp with the
official MCP SDK, a real headless Chromium, and a small site this test serves on
127.0.0.1 (a form, links, a list a button extends)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import FAKE_CONFIG
from tests.e2e.test_claude_code import claude_bin
from tests.helpers import ROOT, poll_until
from turnout.supervisor.launch import TurnoutProcess
from turnout.workers.cdp import find_executable


def need_chromium() -> None:
    """Skip a test that drives Chromium when there is none (the one test about that
    case runs regardless)."""
    if find_executable() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")

FORM = """<!doctype html><html><head><title>Test form</title></head><body>
<h1>Order</h1>
<form action="/submit" method="get">
  <label>Name <input name="name" type="text"></label>
  <label>Size <select name="size"><option value="s">Small</option><option value="l">Large</option></select></label>
  <button type="submit">Send order</button>
</form>
<p><a href="/other">Other page</a> <a href="OUTSIDE">Elsewhere</a></p>
<ul id="items"><li>item 1</li></ul>
<button id="more" onclick="var li = document.createElement('li');
  li.textContent = 'item ' + (document.querySelectorAll('#items li').length + 1);
  document.getElementById('items').appendChild(li)">Add item</button>
<p id="echo"></p>
<script>
document.querySelector('input[name=name]').addEventListener('input',
  e => { document.getElementById('echo').textContent = 'typed: ' + e.target.value; });
</script>
</body></html>"""


class Site:
    """The test site on 127.0.0.1; ``other`` is a second origin (another port)."""

    def __init__(self) -> None:
        self.servers: list[ThreadingHTTPServer] = []
        self.hits: list[str] = []  # "port path" of every request, in order

    def serve(self, pages: dict[str, str]) -> str:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                site.hits.append(f"{self.server.server_address[1]} {path}")
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("location", f"http://127.0.0.1:{site.servers[0].server_address[1]}/moved")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if path == "/submit":
                    q = parse_qs(urlsplit(self.path).query)
                    body = (f"<title>Thanks</title><h1>Received</h1><p>name={q.get('name', [''])[0]}</p>"
                            f"<p>size={q.get('size', [''])[0]}</p>")
                elif path in pages:
                    body = pages[path]
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, str, Site]]:
    need_chromium()
    s = Site()
    other = s.serve({"/": "<title>Outside</title><h1>Another origin</h1>"})
    base = s.serve({"/": FORM.replace("OUTSIDE", other + "/"),
                    "/other": "<title>Other</title><h1>The other page</h1><a href='/'>Back</a>",
                    "/sneaky": (f"<title>Sneaky</title><iframe src='{other}/framed'></iframe>"
                                f"<a href='{other}/popup' target='_blank'>Popup</a>"
                                f"<a href='/redirect'>Redirect</a>"
                                "<button onclick=\"alert('hello from the page')\">Alert</button>")})
    yield base, other, s
    s.close()


@pytest.fixture(scope="module")
def site(served: tuple[str, str, Site]) -> tuple[str, str]:
    return served[0], served[1]


@pytest.fixture(scope="module")
def t(tmp_path_factory: pytest.TempPathFactory, site: tuple[str, str]) -> Iterator[TurnoutProcess]:
    base, _ = site
    cfg = FAKE_CONFIG + f'\n[browser]\nallow = ["{base}"]\naction_timeout_s = 20.0\n'
    tp = TurnoutProcess(cfg, workdir=str(tmp_path_factory.mktemp("browser")))
    before = set(Path(tempfile.gettempdir()).glob("turnout-browser-*"))
    tp.start()
    yield tp
    tp.stop()
    assert not tp.leftovers(), tp.leftovers()  # Chromium's processes included
    # its profiles and downloads too
    assert not set(Path(tempfile.gettempdir()).glob("turnout-browser-*")) - before


async def _session(t: TurnoutProcess, steps: Any, session: str) -> Any:
    # The conversation's session header, as Claude Code (and `turnout mcp`) send it:
    # each conversation gets its own browser context.
    headers = {"Authorization": f"Bearer {t.token}", "X-Claude-Code-Session-Id": session}
    async with create_mcp_http_client(headers=headers) as hc:
        async with Client(streamable_http_client(t.base_url + "/mcp", http_client=hc)) as c:
            return await steps(c)


def run(t: TurnoutProcess, steps: Any, session: str = "") -> Any:
    """``steps`` in a conversation of its own (by default one per test)."""
    return asyncio.run(_session(t, steps, session or os.environ["PYTEST_CURRENT_TEST"].split(" ")[0]))


def text(r: Any) -> str:
    assert not r.is_error, r.content[0].text
    return str(r.content[0].text)


def ref(snapshot: str, line_pattern: str) -> str:
    """The ref on the first snapshot line matching ``line_pattern``."""
    for line in snapshot.splitlines():
        if re.search(line_pattern, line):
            hit = re.search(r"\[ref=(e\d+)\]", line)
            assert hit, line
            return hit.group(1)
    raise AssertionError(f"no line matches {line_pattern!r} in:\n{snapshot}")


def chromium_pids(t: TurnoutProcess) -> list[int]:
    """Chromium main processes under the browser worker."""
    out = []
    for w in t.admin_workers():
        if w["backend"] == "browser" and w["state"] == "ready":
            for p in psutil.Process(int(w["pid"])).children():
                if "chrom" in p.name():
                    out.append(p.pid)
    return out


def test_tools_are_listed_and_evaluate_is_off_by_default(t: TurnoutProcess) -> None:
    async def steps(c: Client) -> Any:
        return {x.name for x in (await c.list_tools()).tools}
    names = run(t, steps)
    assert {"browser_navigate", "browser_snapshot", "browser_click", "browser_type", "browser_select",
            "browser_press", "browser_wait_for", "browser_screenshot", "browser_tabs", "browser_close"} <= names
    assert "browser_evaluate" not in names


def test_navigate_snapshot_click_type_select_change_the_page(t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, _ = site

    async def steps(c: Client) -> dict[str, str]:
        out: dict[str, str] = {}
        out["nav"] = text(await c.call_tool("browser_navigate", {"url": base + "/"}))
        snap = out["snap"] = text(await c.call_tool("browser_snapshot", {}))
        out["more"] = text(await c.call_tool("browser_click", {"ref": ref(snap, r'button "Add item"')}))
        out["typed"] = text(await c.call_tool("browser_type", {"ref": ref(snap, r"textbox \"Name\""),
                                                               "text": "Ada Lovelace"}))
        out["selected"] = text(await c.call_tool("browser_select", {"ref": ref(snap, r'combobox "Size"'),
                                                                    "values": ["Large"]}))
        out["stale_ok"] = text(await c.call_tool("browser_snapshot", {}))
        out["sent"] = text(await c.call_tool("browser_click", {"ref": ref(snap, r'button "Send order"')}))
        out["old_ref"] = (await c.call_tool("browser_click", {"ref": ref(snap, r'button "Add item"')})).content[0].text
        return out

    out = run(t, steps)
    assert out["nav"].startswith(f"Page: {base}/") and "Title: Test form" in out["nav"]
    snap = out["snap"]
    assert 'heading "Order"' in snap and 'link "Other page"' in snap and "item 1" in snap
    assert re.search(r'button "Add item" \[ref=e\d+\]', snap)
    # the button's handler ran: the list has a second item; the old refs still hold
    assert "item 2" in out["more"] and ref(out["more"], r'button "Add item"') == ref(snap, r'button "Add item"')
    assert "typed: Ada Lovelace" in out["typed"] and '[value=Ada Lovelace]' in out["typed"]
    assert re.search(r'combobox "Size" \[value=Large\]', out["selected"]), out["selected"]
    # submitting navigated: the server received what was typed and chosen
    assert "Title: Thanks" in out["sent"] and "name=Ada Lovelace" in out["sent"] and "size=l" in out["sent"]
    # a ref of the old document names nothing now
    assert "is not on this page" in out["old_ref"] and "browser_snapshot" in out["old_ref"]


def test_press_and_wait_for(t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, _ = site

    async def steps(c: Client) -> tuple[str, str, Any]:
        snap = text(await c.call_tool("browser_navigate", {"url": base + "/"}))
        await c.call_tool("browser_type", {"ref": ref(snap, r'textbox "Name"'), "text": "Grace"})
        pressed = text(await c.call_tool("browser_press", {"key": "Enter", "ref": ref(snap, r'textbox "Name"')}))
        waited = text(await c.call_tool("browser_wait_for", {"text": "name=Grace"}))
        missing = await c.call_tool("browser_wait_for", {"text": "never on the page", "timeout_s": 1})
        return pressed, waited, missing

    pressed, waited, missing = run(t, steps)
    assert "Title: Thanks" in pressed and "name=Grace" in waited
    assert missing.is_error and "never on the page" in missing.content[0].text


def test_allowlist_refuses_another_origin(t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, other = site

    async def steps(c: Client) -> tuple[Any, Any, str]:
        typed = await c.call_tool("browser_navigate", {"url": other + "/"})
        snap = text(await c.call_tool("browser_navigate", {"url": base + "/"}))
        clicked = await c.call_tool("browser_click", {"ref": ref(snap, r'link "Elsewhere"')})
        after = text(await c.call_tool("browser_snapshot", {}))
        return typed, clicked, after

    typed, clicked, after = run(t, steps)
    assert typed.is_error and "not in [browser] allow" in typed.content[0].text
    # a link to another origin is stopped in the browser too (Fetch), not only a typed URL
    assert "Another origin" not in clicked.content[0].text and "Another origin" not in after
    assert f"Blocked (not in [browser] allow): {other}/" in clicked.content[0].text


def test_screenshot_is_png_image_content(t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, _ = site

    async def steps(c: Client) -> Any:
        await c.call_tool("browser_navigate", {"url": base + "/"})
        return await c.call_tool("browser_screenshot", {})

    r = run(t, steps)
    assert not r.is_error
    img = r.content[0]
    assert img.type == "image" and img.mime_type == "image/png"
    png = base64.b64decode(img.data)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_sessions_are_isolated(t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, _ = site

    async def first(c: Client) -> None:
        snap = text(await c.call_tool("browser_navigate", {"url": base + "/"}))
        await c.call_tool("browser_click", {"ref": ref(snap, r'button "Add item"')})

    async def second(c: Client) -> Any:
        return await c.call_tool("browser_snapshot", {})

    run(t, first, "conversation-a")
    r = run(t, second, "conversation-b")  # another conversation: another browser context, no page yet
    assert r.is_error and "browser_navigate" in r.content[0].text
    again = run(t, second, "conversation-a")  # the first one's page is still there, as it left it
    assert "item 2" in text(again)


def test_chromium_killed_mid_action_is_a_clean_error_and_the_next_call_works(
        t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, _ = site

    async def steps(c: Client) -> tuple[Any, str]:
        await c.call_tool("browser_navigate", {"url": base + "/"})
        pids = await asyncio.to_thread(poll_until, lambda: chromium_pids(t))
        waiting = asyncio.ensure_future(c.call_tool("browser_wait_for", {"text": "never", "timeout_s": 60}))

        def in_flight() -> bool:
            return any(w["backend"] == "browser" and w["in_flight"] for w in t.admin_workers())
        await asyncio.to_thread(poll_until, in_flight)
        for pid in pids:
            psutil.Process(pid).kill()
        failed = await waiting
        again = text(await c.call_tool("browser_navigate", {"url": base + "/other"}))
        return failed, again

    failed, again = run(t, steps)
    # a clean error that says what happened: "Chromium exited during browser_wait_for" (or,
    # when the kill beat the action to the browser thread, that the browser was restarted)
    said = failed.content[0].text
    assert failed.is_error and ("Chromium exited during browser_wait_for" in said
                                or "the browser exited and was started again" in said), said
    assert "The other page" in again
    # the same worker: Chromium was restarted inside it, the worker was not
    workers = [w for w in t.admin_workers() if w["backend"] == "browser"]
    assert len(workers) == 1 and workers[0]["restarts"] == 0


def test_no_chromium_is_a_tool_error_naming_what_to_install(tmp_path_factory: pytest.TempPathFactory) -> None:
    cfg = FAKE_CONFIG + '\n[browser]\nexecutable = "/nonexistent/chromium"\n'
    tp = TurnoutProcess(cfg, workdir=str(tmp_path_factory.mktemp("nobrowser")))
    tp.start()
    try:
        async def steps(c: Client) -> Any:
            return await c.call_tool("browser_navigate", {"url": "http://127.0.0.1:9/"})
        r = run(tp, steps)
    finally:
        tp.stop()
    assert r.is_error and "apt-get install chromium" in r.content[0].text
    assert not tp.leftovers(), tp.leftovers()



@pytest.mark.slow  # the real Claude Code CLI
def test_claude_code_lists_and_calls_the_browser_tools(t: TurnoutProcess, site: tuple[str, str],
                                                       tmp_path: Path) -> None:
    """`turnout claude setup`, then the real Claude Code CLI in print mode: its tool
    list has mcp__turnout__browser_*, and a browser_navigate the model asks for (the
    fake's tool knob) comes back as the page's snapshot."""
    base, _ = site
    exe = claude_bin()
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".claude").mkdir(parents=True)
    work.mkdir()
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True,
                                                   "projects": {str(work): {"hasTrustDialogAccepted": True}}}))
    env = {"PATH": f"{Path(exe).parent}:{os.environ['PATH']}", "HOME": str(home),
           "XDG_STATE_HOME": str(home / ".local/state"), "XDG_CONFIG_HOME": str(home / ".config"),
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1"}
    setup = subprocess.run([sys.executable, "-m", "turnout.cli", "claude", "--config", str(t.config_path), "--url",
                            t.base_url, "setup"], env={**env, "TURNOUT_TOKEN": t.token, "PYTHONPATH": os.pathsep.join(
                               x for x in (os.environ.get("PYTHONPATH", ""), str(ROOT)) if x)},
                           cwd=work, capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, setup.stderr
    prompt = '[[tool:mcp__turnout__browser_navigate {"url": "' + base + '/"}]]'
    out = subprocess.run([exe, "-p", prompt, "--allowedTools", "mcp__turnout__browser_navigate",
                          "--output-format", "stream-json", "--verbose"],
                         env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    init = next(e for e in events if e.get("type") == "system" and e.get("subtype") == "init")
    listed = {x for x in init["tools"] if x.startswith("mcp__turnout__browser_")}
    assert {f"mcp__turnout__browser_{n}" for n in ("navigate", "snapshot", "click", "type", "select", "press",
                                                   "wait_for", "screenshot", "tabs", "close")} <= listed, listed
    results = [block for e in events if e.get("type") == "user"
               for block in (e.get("message") or {}).get("content") or []
               if isinstance(block, dict) and block.get("type") == "tool_result"]
    assert results, out.stdout[-3000:]
    content = results[0]["content"]
    shown = content if isinstance(content, str) else " ".join(c.get("text", "") for c in content)
    assert not results[0].get("is_error") and "Title: Test form" in shown and 'button "Add item"' in shown, shown


def test_allowlist_holds_for_frames_popups_and_redirects(t: TurnoutProcess, served: tuple[str, str, Site]) -> None:
    """Not one request reaches the other origin, however the page asks for it."""
    base, other, s = served
    other_port = other.rsplit(":", 1)[1]

    async def steps(c: Client) -> tuple[str, str, str, str]:
        snap = text(await c.call_tool("browser_navigate", {"url": base + "/sneaky"}))
        popup = text(await c.call_tool("browser_click", {"ref": ref(snap, r'link "Popup"')}))
        tabs = text(await c.call_tool("browser_tabs", {}))
        redirected = (await c.call_tool("browser_click", {"ref": ref(snap, r'link "Redirect"')})).content[0].text
        return snap, popup, tabs, redirected

    snap, _, tabs, redirected = run(t, steps)
    assert not [h for h in s.hits if h.startswith(other_port + " ")], s.hits
    assert "Another origin" not in snap + tabs + redirected
    assert f"{other}/moved" in redirected and "not in [browser] allow" in redirected


def test_dialogs_are_answered_and_reported(t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, _ = site

    async def steps(c: Client) -> str:
        snap = text(await c.call_tool("browser_navigate", {"url": base + "/sneaky"}))
        return text(await c.call_tool("browser_click", {"ref": ref(snap, r'button "Alert"')}))

    out = run(t, steps)
    assert "Dialogs answered: alert: hello from the page" in out


def test_evaluate_when_the_config_turns_it_on(tmp_path_factory: pytest.TempPathFactory,
                                             site: tuple[str, str]) -> None:
    base, _ = site
    tp = TurnoutProcess(FAKE_CONFIG + "\n[browser]\nevaluate = true\n",
                        workdir=str(tmp_path_factory.mktemp("evaluate")))
    tp.start()
    try:
        async def steps(c: Client) -> tuple[set[str], str, Any]:
            names = {x.name for x in (await c.list_tools()).tools}
            snap = text(await c.call_tool("browser_navigate", {"url": base + "/"}))
            await c.call_tool("browser_click", {"ref": ref(snap, r'button "Add item"')})
            value = text(await c.call_tool("browser_evaluate", {
                "expression": "[document.title, document.querySelectorAll('#items li').length]"}))
            thrown = await c.call_tool("browser_evaluate", {"expression": "null.x"})
            return names, value, thrown
        names, value, thrown = run(tp, steps)
    finally:
        tp.stop()
    assert "browser_evaluate" in names
    assert json.loads(value) == ["Test form", 2]
    assert thrown.is_error and "TypeError" in thrown.content[0].text
    assert not tp.leftovers(), tp.leftovers()


def test_chromium_killed_between_calls_restarts_transparently(t: TurnoutProcess, site: tuple[str, str]) -> None:
    base, _ = site

    async def steps(c: Client) -> tuple[str, list[int], list[int]]:
        await c.call_tool("browser_navigate", {"url": base + "/"})
        pids = await asyncio.to_thread(poll_until, lambda: chromium_pids(t))
        for pid in pids:
            psutil.Process(pid).kill()
        again = text(await c.call_tool("browser_navigate", {"url": base + "/other"}))
        return again, pids, chromium_pids(t)

    again, before, after = run(t, steps)
    assert "The other page" in again
    assert after and not set(after) & set(before)  # a new Chromium
