"""The page actions of the browser worker (workers/browser.py): click, type, select,
press, wait for a text, screenshot, evaluate; and which URLs a page may load.

Mixed into :class:`~turnout.workers.browser.Browser`, which owns the CDP connection
and the tabs; each action runs on the browser thread's loop and ends by answering
the page as a snapshot (:meth:`Browser.snapshot`).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from turnout.protocol import messages as m
from turnout.workers.cdp import CdpConnection, CdpError

if TYPE_CHECKING:
    from turnout.workers.browser import Session, Tab

# Keys browser_press knows by name: (key, code, Windows virtual key code, text).
KEYS: dict[str, tuple[str, str, int, str]] = {
    "enter": ("Enter", "Enter", 13, "\r"), "tab": ("Tab", "Tab", 9, ""), "escape": ("Escape", "Escape", 27, ""),
    "backspace": ("Backspace", "Backspace", 8, ""), "delete": ("Delete", "Delete", 46, ""),
    "arrowup": ("ArrowUp", "ArrowUp", 38, ""), "arrowdown": ("ArrowDown", "ArrowDown", 40, ""),
    "arrowleft": ("ArrowLeft", "ArrowLeft", 37, ""), "arrowright": ("ArrowRight", "ArrowRight", 39, ""),
    "home": ("Home", "Home", 36, ""), "end": ("End", "End", 35, ""), "pageup": ("PageUp", "PageUp", 33, ""),
    "pagedown": ("PageDown", "PageDown", 34, ""), "space": (" ", "Space", 32, " "),
}
MODIFIERS = {"alt": 1, "control": 2, "ctrl": 2, "meta": 4, "cmd": 4, "shift": 8}

_SELECT_FN = """function(vals) {
  if (this.tagName !== 'SELECT') return {error: 'is not a <select> (a ' + this.tagName.toLowerCase() + ')'};
  const opts = [...this.options];
  const hit = v => opts.find(o => o.value === v || o.label === v || o.text.trim() === v);
  const missing = vals.filter(v => !hit(v));
  if (missing.length) return {error: 'has no option ' + JSON.stringify(missing[0]) + '; its options: ' +
                              opts.map(o => JSON.stringify(o.label)).join(', ')};
  if (!this.multiple && vals.length > 1) return {error: 'takes one value'};
  for (const o of opts) o.selected = vals.some(v => hit(v) === o);
  this.dispatchEvent(new Event('input', {bubbles: true}));
  this.dispatchEvent(new Event('change', {bubbles: true}));
  return {selected: opts.filter(o => o.selected).map(o => o.label)};
}"""
_SELECT_ALL_FN = """function() {
  if (typeof this.select === 'function') this.select();
  else if (this.isContentEditable) document.getSelection().selectAllChildren(this);
}"""
_WAIT_FN = """(async (t, g, ms) => {
  const has = s => (document.body ? document.body.innerText : '').includes(s);
  const ok = () => (!t || has(t)) && (!g || !has(g));
  if (ok()) return true;
  return await new Promise(res => {
    const obs = new MutationObserver(() => { if (ok()) { obs.disconnect(); res(true); } });
    obs.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
    setTimeout(() => { obs.disconnect(); res(ok()); }, ms);
  });
})"""
# After an input event: let the page's handlers and a form submission they scheduled
# run (a task; not requestAnimationFrame, which waits forever in a tab a popup hid).
_SETTLE = "new Promise(r => setTimeout(r, 0))"
SETTLE_S = 2.0


class ActionError(Exception):
    """An action that cannot be done as asked; the message says why and what to do."""


def url_allowed(url: str, allow: list[str]) -> bool:
    """Whether a page may load ``url`` as a document: every http(s) URL when ``allow``
    is empty, else one that a glob of ``allow`` matches (:func:`glob_matches`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return False
    return not allow or any(glob_matches(parts, g) for g in allow)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def glob_matches(parts: SplitResult, glob: str) -> bool:
    """``scheme://host[:port][/path]`` with globs in each part, matched part by part
    (a ``*`` never reaches from the host into the path: ``https://*.example.com/*``
    does not match ``https://evil.test/.example.com/``). No scheme: http and https;
    no port: the scheme's default; no path: any path."""
    g = glob if "://" in glob else f"http*://{glob}"
    scheme_g, _, rest = g.partition("://")
    hostport, slash, path_g = rest.partition("/")
    host_g, _, port_g = hostport.partition(":")
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return False
    if not fnmatch.fnmatchcase(parts.scheme, scheme_g.lower()):
        return False
    if not fnmatch.fnmatchcase((parts.hostname or "").lower(), host_g.lower()):
        return False
    if port_g:
        if not fnmatch.fnmatchcase(str(port), port_g):
            return False
    elif port != _DEFAULT_PORTS.get(parts.scheme):
        return False
    if not slash:
        return True
    path = parts.path or "/"
    return fnmatch.fnmatchcase(path + (f"?{parts.query}" if parts.query else ""), "/" + path_g) or \
        fnmatch.fnmatchcase(path, "/" + path_g)


class PageActions:
    """The actions on a tab's page; see the module docstring."""

    cdp: CdpConnection | None
    sessions: dict[str, Session]
    contexts: dict[str, str]

    if TYPE_CHECKING:
        async def call(self, tab: Tab, method: str, params: dict[str, Any], deadline: float) -> dict[str, Any]: ...
        async def _settled(self, tab: Tab, deadline: float) -> str: ...
        async def snapshot(self, tab: Tab, deadline: float, note: str = "") -> str: ...
        async def new_tab(self, sess: Session, url: str, deadline: float) -> Tab: ...
        def _drop_tab(self, target_id: str) -> None: ...

    tabs: dict[str, Tab]
    allow: list[str]


    async def node(self, tab: Tab, ref: str) -> int:
        if not ref:
            raise ActionError("ref: give an element's ref from browser_snapshot (such as e3)")
        node = tab.refs.node(ref)
        if node is None:
            raise ActionError(f"ref: {ref!r} is not on this page (refs last until the page changes): take a new "
                              "browser_snapshot")
        return node

    async def _object(self, tab: Tab, node: int, ref: str, deadline: float) -> str:
        try:
            res = await self.call(tab, "DOM.resolveNode", {"backendNodeId": node}, deadline)
        except CdpError:
            raise ActionError(f"ref: {ref!r} is no longer in the page: take a new browser_snapshot") from None
        return str(res["object"]["objectId"])

    async def _after_input(self, tab: Tab, deadline: float, tabs_before: int) -> str:
        with contextlib.suppress(CdpError, TimeoutError):
            assert self.cdp is not None
            await self.cdp.call("Runtime.evaluate", {"expression": _SETTLE, "awaitPromise": True}, tab.cdp_session,
                                timeout=min(SETTLE_S, _left(deadline)))
        note = await self._settled(tab, deadline)
        sess = self.sessions.get(self.contexts.get(self._context_of(tab), ""), None)
        if sess is not None and len(sess.tabs) > tabs_before:
            note = (note + "\n" if note else "") + "A new tab opened (browser_tabs lists it and switches to it)"
        return note

    def _context_of(self, tab: Tab) -> str:
        for cid, key in self.contexts.items():
            sess = self.sessions.get(key)
            if sess is not None and tab.target_id in sess.tabs:
                return cid
        return ""

    def _tab_count(self, tab: Tab) -> int:
        sess = self.sessions.get(self.contexts.get(self._context_of(tab), ""), None)
        return len(sess.tabs) if sess is not None else 0

    async def _click(self, tab: Tab, p: m.BrowserParams, deadline: float) -> str:
        node = await self.node(tab, p.ref)
        with contextlib.suppress(CdpError):
            await self.call(tab, "DOM.scrollIntoViewIfNeeded", {"backendNodeId": node}, deadline)
        try:
            quads = (await self.call(tab, "DOM.getContentQuads", {"backendNodeId": node}, deadline)).get("quads")
        except CdpError:
            quads = None
        if not quads:
            raise ActionError(f"ref: {p.ref!r} is not visible on the page (no box to click)")
        q = quads[0]
        x, y = sum(q[0::2]) / 4, sum(q[1::2]) / 4
        tab.blocked.clear()
        before = self._tab_count(tab)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(tab, "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                              "clickCount": 1}, deadline)
        note = await self._after_input(tab, deadline, before)
        return await self.snapshot(tab, deadline, note)

    async def _type(self, tab: Tab, p: m.BrowserParams, deadline: float) -> str:
        node = await self.node(tab, p.ref)
        try:
            await self.call(tab, "DOM.focus", {"backendNodeId": node}, deadline)
        except CdpError:
            raise ActionError(f"ref: {p.ref!r} cannot take text (it cannot be focused)") from None
        obj = await self._object(tab, node, p.ref, deadline)
        before = self._tab_count(tab)
        await self.call(tab, "Runtime.callFunctionOn", {"objectId": obj, "functionDeclaration": _SELECT_ALL_FN},
                        deadline)
        if p.text:
            await self.call(tab, "Input.insertText", {"text": p.text}, deadline)
        else:
            await self._key(tab, "Delete", 0, deadline)
        if p.submit:
            await self._key(tab, "Enter", 0, deadline)
        note = await self._after_input(tab, deadline, before)
        return await self.snapshot(tab, deadline, note)

    async def _select(self, tab: Tab, p: m.BrowserParams, deadline: float) -> str:
        node = await self.node(tab, p.ref)
        if not p.values:
            raise ActionError("values: give the option(s) to select, by value or label")
        obj = await self._object(tab, node, p.ref, deadline)
        before = self._tab_count(tab)
        res = await self.call(tab, "Runtime.callFunctionOn", {
            "objectId": obj, "functionDeclaration": _SELECT_FN, "arguments": [{"value": list(p.values)}],
            "returnByValue": True}, deadline)
        out = (res.get("result") or {}).get("value") or {}
        if "error" in out:
            raise ActionError(f"ref: {p.ref!r} {out['error']}")
        note = await self._after_input(tab, deadline, before)
        return await self.snapshot(tab, deadline, note)

    async def _key(self, tab: Tab, spec: str, _unused: int, deadline: float) -> None:
        *mods, name = [x for x in spec.replace(" ", "").split("+") if x] or [""]
        bits = 0
        for mod in mods:
            if mod.lower() not in MODIFIERS:
                raise ActionError(f"key: unknown modifier {mod!r} (Alt, Control, Meta, Shift)")
            bits |= MODIFIERS[mod.lower()]
        known = KEYS.get(name.lower())
        if known is not None:
            key, code, vk, text = known
        elif len(name) == 1:
            key, text = name, name
            code = f"Key{name.upper()}" if name.isalpha() else (f"Digit{name}" if name.isdigit() else "")
            vk = ord(name.upper()) if name.isalnum() else 0
        else:
            raise ActionError(f"key: unknown key {name!r}; one character or one of: "
                              + ", ".join(k for k, *_ in KEYS.values()))
        if bits & ~8:  # with Control/Alt/Meta a key types nothing
            text = ""
        down: dict[str, Any] = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": code,
                                "windowsVirtualKeyCode": vk, "modifiers": bits}
        if text:
            down["text"] = text
        await self.call(tab, "Input.dispatchKeyEvent", down, deadline)
        await self.call(tab, "Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                                        "windowsVirtualKeyCode": vk, "modifiers": bits}, deadline)

    async def _press(self, tab: Tab, p: m.BrowserParams, deadline: float) -> str:
        if not p.key:
            raise ActionError("key: give a key such as Enter, Tab, ArrowDown, a, Control+a")
        if p.ref:
            node = await self.node(tab, p.ref)
            with contextlib.suppress(CdpError):
                await self.call(tab, "DOM.focus", {"backendNodeId": node}, deadline)
        tab.blocked.clear()
        before = self._tab_count(tab)
        await self._key(tab, p.key, 0, deadline)
        note = await self._after_input(tab, deadline, before)
        return await self.snapshot(tab, deadline, note)

    async def _wait_for(self, tab: Tab, p: m.BrowserParams, deadline: float) -> str:
        if not p.text and not p.text_gone:
            raise ActionError("text: give the text to wait for (or text_gone: the text to wait to disappear)")
        expr = f"{_WAIT_FN}({json.dumps(p.text)}, {json.dumps(p.text_gone)}, {int(max(0.0, _left(deadline) - 1) * 1000)})"
        while True:
            try:
                res = await self.call(tab, "Runtime.evaluate", {"expression": expr, "awaitPromise": True,
                                                                "returnByValue": True}, deadline)
            except CdpError:  # the page navigated while we waited: ask the new one
                if _left(deadline) < 1.0:
                    raise TimeoutError from None
                await self._settled(tab, deadline)
                continue
            if (res.get("result") or {}).get("value") is True:
                return await self.snapshot(tab, deadline)
            what = f"{p.text!r} to appear" if p.text else f"{p.text_gone!r} to disappear"
            raise ActionError(f"waited {p.timeout_s:g} s for {what}; it did not")

    async def _screenshot(self, tab: Tab, p: m.BrowserParams, deadline: float) -> tuple[str, bytes]:
        params: dict[str, Any] = {"format": "png"}
        if p.full_page:
            metrics = await self.call(tab, "Page.getLayoutMetrics", {}, deadline)
            size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size.get("width", 1280),
                                                            "height": min(size.get("height", 800), 16384),
                                                            "scale": 1})
        res = await self.call(tab, "Page.captureScreenshot", params, deadline)
        return f"screenshot of {tab.url}", base64.b64decode(res["data"])

    async def _evaluate(self, tab: Tab, p: m.BrowserParams, deadline: float) -> str:
        if not p.evaluate:
            raise ActionError("browser_evaluate is off: set evaluate = true under [browser] in turnout's config "
                              "to let a caller run JavaScript in its pages")
        if not p.expression:
            raise ActionError("expression: give the JavaScript to run")
        res = await self.call(tab, "Runtime.evaluate", {"expression": p.expression, "returnByValue": True,
                                                        "awaitPromise": True, "userGesture": True}, deadline)
        if res.get("exceptionDetails"):
            d = res["exceptionDetails"]
            desc = ((d.get("exception") or {}).get("description") or d.get("text") or "exception").splitlines()[0]
            raise ActionError(f"expression: threw {desc}")
        value = (res.get("result") or {}).get("value")
        return json.dumps(value, ensure_ascii=False)[:40_000] if value is not None else \
            str((res.get("result") or {}).get("description") or "undefined")

    def check_url(self, url: str, sess: Session, allow: list[str]) -> None:
        parts = urlsplit(url)
        if url == "about:blank":
            return
        if parts.scheme == "file":
            path = os.path.realpath(parts.path)
            if not path.startswith(os.path.realpath(sess.downloads) + os.sep):
                raise ActionError(f"url: {url!r}: a file: URL may only open this session's downloads "
                                  f"({sess.downloads})")
            return
        if parts.scheme not in ("http", "https"):
            raise ActionError(f"url: {url!r}: only http(s) URLs (and about:blank) can be opened")
        if not url_allowed(url, allow):
            raise ActionError(f"url: {url!r} is not in [browser] allow ({', '.join(allow)}): refused")

    async def _tabs(self, sess: Session, p: m.BrowserParams, deadline: float) -> str:
        what = p.tab_action or "list"
        if what == "new":
            if p.url:
                self.check_url(p.url, sess, self.allow)
            await self.new_tab(sess, p.url, deadline)
        elif what in ("select", "close"):
            if not 0 <= p.tab < len(sess.tabs):
                raise ActionError(f"tab: {p.tab} is not an open tab (0 to {len(sess.tabs) - 1})")
            tid = sess.tabs[p.tab]
            if what == "select":
                sess.active = tid
                assert self.cdp is not None
                with contextlib.suppress(CdpError):
                    await self.cdp.call("Target.activateTarget", {"targetId": tid}, timeout=_left(deadline))
            else:
                assert self.cdp is not None
                await self.cdp.call("Target.closeTarget", {"targetId": tid}, timeout=_left(deadline))
                self._drop_tab(tid)
        elif what != "list":
            raise ActionError(f"action: {what!r} is not one of list, new, select, close")
        lines = [f"{i}{' (current)' if tid == sess.active else ''}: {self.tabs[tid].url} — {self.tabs[tid].title}"
                 for i, tid in enumerate(sess.tabs) if tid in self.tabs]
        return "\n".join(lines) or "no tabs are open"


def _left(deadline: float) -> float:
    import time

    return max(0.05, deadline - time.monotonic())
