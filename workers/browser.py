"""The ``browser`` backend (issue 18): one headless Chromium, driven over CDP, for
the MCP browser tools.

Roles:

* the compute loop (workers/base.py) runs each ``Job`` with ``BrowserParams`` as a
  generator that hands the action to the browser thread and yields a short
  :class:`~turnout.workers.base.Pause` until it is answered, so actions of several
  MCP sessions overlap, heartbeats go on, and a cancel reaches the action;
* the browser thread runs an asyncio loop that owns Chromium and its CDP pipe
  (:mod:`turnout.workers.cdp`; one owner for the pipe) and the state below.

State: one Chromium (started on the first action, started again on the next action
after it dies), a browser context per MCP session (``Target.createBrowserContext``:
cookies, storage and cache of one session are invisible to another), its tabs, and
per tab the refs of its last snapshot (:mod:`turnout.workers.browser_snapshot`).
Every page target is auto-attached and held until it is set up (allowlist through
``Fetch`` on documents, dialogs answered), so a popup or a redirect obeys
``[browser] allow`` as a typed URL does. Downloads go to the session's temp dir; a
``file:`` URL is refused unless it is inside it. Every action is bounded by its
``timeout_s``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq

from turnout.protocol import messages as m
from turnout.workers.base import BackendError, GenContext, GenItem, Pause, WithFrames, WorkerSpec
from turnout.workers.browser_pages import ActionError, PageActions, url_allowed
from turnout.workers.browser_snapshot import RefMap, render
from turnout.workers.cdp import (
    INSTALL_HINT,
    BrowserGone,
    CdpConnection,
    CdpError,
    Chromium,
    find_executable,
    kill_group,
)
from turnout.workers.cdp import temp_workdir as _temp_workdir
from turnout.workers.media import MediaBackend

log = structlog.get_logger()

@dataclass
class Tab:
    target_id: str
    cdp_session: str
    refs: RefMap = field(default_factory=RefMap)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    loading: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    title: str = ""
    blocked: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    crashed: bool = False


@dataclass
class Session:
    key: str
    context_id: str
    downloads: str
    tabs: list[str] = field(default_factory=list)  # target ids, in opening order
    active: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


class Browser(PageActions):
    """Chromium and the sessions in it; lives on the browser thread's loop."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.chromium: Chromium | None = None
        self.cdp: CdpConnection | None = None
        self.sessions: dict[str, Session] = {}
        self.contexts: dict[str, str] = {}  # browserContextId -> session key
        self.tabs: dict[str, Tab] = {}  # targetId -> tab
        self.by_cdp_session: dict[str, Tab] = {}
        self.allow: list[str] = []
        self.lost: set[str] = set()  # sessions whose tabs went with a dead Chromium
        self._start_lock = asyncio.Lock()
        self.restarts = 0

    # ---------------------------------------------------------------- Chromium

    async def ensure(self, p: m.BrowserParams, deadline: float) -> CdpConnection:
        async with self._start_lock:
            if self.chromium is not None and self.chromium.alive() and self.cdp is not None:
                # A Chromium killed a moment ago still looks alive until its pipe's end
                # of file is read: one round trip finds out, and it is restarted now
                # rather than failing the action.
                with contextlib.suppress(BrowserGone, TimeoutError, CdpError):
                    await self.cdp.call("Browser.getVersion", timeout=min(2.0, _left(deadline)))
                    return self.cdp
            if self.chromium is not None:
                self.restarts += 1
                await self.chromium.close(grace=0.5)
                self._forget_all()
            exe = find_executable(p.executable)
            if exe is None:
                which = f"[browser] executable {p.executable!r} is not an executable" if p.executable else \
                    "no Chromium or Chrome was found on PATH"
                raise ActionError(f"the browser tools need Chromium: {which}; {INSTALL_HINT}")
            self.chromium = Chromium(exe, os.path.join(self.workdir, f"chromium-{self.restarts}"))
            try:
                self.cdp = await self.chromium.start(self._on_event, timeout=_left(deadline))
            except (BrowserGone, TimeoutError, OSError) as e:
                self.chromium = None
                raise ActionError(f"Chromium ({exe}) did not start: {type(e).__name__} {e}".strip()) from None
            await self.cdp.call("Target.setDiscoverTargets", {"discover": True})
            await self.cdp.call("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True,
                                                         "flatten": True})
            asyncio.get_running_loop().create_task(self._watch(self.chromium))
            return self.cdp

    async def _watch(self, chromium: Chromium) -> None:
        """Chromium's process exiting closes its connection (every call waiting on it
        fails at once), even if some child still holds the pipe."""
        assert chromium.proc is not None
        await chromium.proc.wait()
        if chromium.cdp is not None:
            chromium.cdp.close()
        log.warning("browser_exited", pid=chromium.pid, returncode=chromium.proc.returncode)

    def _forget_all(self) -> None:
        self.lost |= set(self.sessions)
        self.sessions.clear()
        self.contexts.clear()
        self.tabs.clear()
        self.by_cdp_session.clear()

    async def shutdown(self) -> None:
        if self.chromium is not None:
            await self.chromium.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ events

    def _on_event(self, msg: dict[str, Any]) -> None:
        method = msg.get("method", "")
        params = msg.get("params") or {}
        sid = msg.get("sessionId", "")
        if method == "Target.attachedToTarget":
            asyncio.get_running_loop().create_task(self._attached(params))
            return
        if method == "Target.targetInfoChanged":
            info = params.get("targetInfo") or {}
            tab = self.tabs.get(info.get("targetId", ""))
            if tab is not None:
                tab.url, tab.title = info.get("url", tab.url), info.get("title", tab.title)
            return
        if method in ("Target.targetDestroyed", "Target.detachedFromTarget"):
            self._drop_tab(params.get("targetId") or (params.get("targetInfo") or {}).get("targetId", ""))
            return
        tab = self.by_cdp_session.get(sid)
        if tab is None:
            return
        if method == "Page.frameStartedLoading" and params.get("frameId") == tab.target_id:
            tab.loading = True
            tab.stopped.clear()
        elif method == "Page.frameStoppedLoading" and params.get("frameId") == tab.target_id:
            tab.loading = False
            tab.stopped.set()
        elif method == "Page.frameNavigated" and not (params.get("frame") or {}).get("parentId"):
            tab.refs.reset()
            tab.url = (params.get("frame") or {}).get("url", tab.url)
        elif method == "Fetch.requestPaused":
            asyncio.get_running_loop().create_task(self._paused(tab, params))
        elif method == "Page.javascriptDialogOpening":
            tab.dialogs.append(f"{params.get('type', 'alert')}: {params.get('message', '')}"[:300])
            # Dismissed (accepted for alerts): a dialog left open blocks the page.
            accept = params.get("type") in ("alert", "beforeunload")
            self._spawn_call("Page.handleJavaScriptDialog", {"accept": accept}, sid)
        elif method == "Inspector.targetCrashed":
            tab.crashed = True
            tab.stopped.set()

    def _spawn_call(self, method: str, params: dict[str, Any], sid: str) -> None:
        cdp = self.cdp
        if cdp is None:
            return

        async def go() -> None:
            with contextlib.suppress(BrowserGone, CdpError, TimeoutError):
                await cdp.call(method, params, sid, timeout=5.0)
        asyncio.get_running_loop().create_task(go())

    async def _attached(self, params: dict[str, Any]) -> None:
        info = params.get("targetInfo") or {}
        sid = params.get("sessionId", "")
        cdp = self.cdp
        if cdp is None:
            return
        key = self.contexts.get(info.get("browserContextId", ""))
        try:
            if info.get("type") == "page" and key is not None and key in self.sessions:
                tab = Tab(info["targetId"], sid, url=info.get("url", ""), title=info.get("title", ""))
                self.tabs[tab.target_id] = tab
                self.by_cdp_session[sid] = tab
                sess = self.sessions[key]
                sess.tabs.append(tab.target_id)
                if not sess.active:
                    sess.active = tab.target_id
                # Sent in order, answered together: a target held at start answers
                # Page.enable only once it runs, and Fetch must be on before it loads.
                setup = [cdp.call("Page.enable", {}, sid), cdp.call("DOM.enable", {}, sid),
                         cdp.call("Inspector.enable", {}, sid)]
                if self.allow:
                    setup.append(cdp.call("Fetch.enable", {"patterns": [{"resourceType": "Document"}]}, sid))
                setup.append(cdp.call("Runtime.runIfWaitingForDebugger", {}, sid))
                await asyncio.gather(*setup)
                tab.ready.set()
            else:
                await cdp.call("Runtime.runIfWaitingForDebugger", {}, sid)
        except (BrowserGone, CdpError, TimeoutError) as e:
            log.debug("browser_attach_failed", error=str(e))

    async def _paused(self, tab: Tab, params: dict[str, Any]) -> None:
        url = (params.get("request") or {}).get("url", "")
        rid = params.get("requestId")
        cdp = self.cdp
        if cdp is None:
            return
        with contextlib.suppress(BrowserGone, CdpError, TimeoutError):
            if url_allowed(url, self.allow):
                await cdp.call("Fetch.continueRequest", {"requestId": rid}, tab.cdp_session)
            else:
                tab.blocked.append(url)
                log.info("browser_navigation_blocked", url=url[:200])
                await cdp.call("Fetch.failRequest", {"requestId": rid, "errorReason": "BlockedByClient"},
                               tab.cdp_session)

    def _drop_tab(self, target_id: str) -> None:
        tab = self.tabs.pop(target_id, None)
        if tab is None:
            return
        self.by_cdp_session.pop(tab.cdp_session, None)
        tab.stopped.set()
        for sess in self.sessions.values():
            if target_id in sess.tabs:
                sess.tabs.remove(target_id)
                if sess.active == target_id:
                    sess.active = sess.tabs[-1] if sess.tabs else ""

    # ---------------------------------------------------------------- sessions

    async def session(self, p: m.BrowserParams, deadline: float, create: bool) -> Session | None:
        cdp = await self.ensure(p, deadline)
        sess = self.sessions.get(p.session)
        if sess is not None or not create:
            return sess
        while len(self.sessions) >= max(1, p.max_sessions):
            oldest = min(self.sessions.values(), key=lambda s: s.last_used)
            await self._close_session(oldest)
        ctx = await cdp.call("Target.createBrowserContext", {"disposeOnDetach": False}, timeout=_left(deadline))
        cid = ctx["browserContextId"]
        downloads = os.path.join(self.workdir, "downloads", f"{len(self.contexts)}-{cid[:8]}")
        os.makedirs(downloads, mode=0o700, exist_ok=True)
        sess = Session(p.session, cid, downloads)
        self.sessions[p.session] = sess
        self.contexts[cid] = p.session
        self.lost.discard(p.session)
        await cdp.call("Browser.setDownloadBehavior", {"behavior": "allow", "browserContextId": cid,
                                                       "downloadPath": downloads}, timeout=_left(deadline))
        return sess

    async def _close_session(self, sess: Session) -> None:
        self.sessions.pop(sess.key, None)
        self.contexts.pop(sess.context_id, None)
        for t in list(sess.tabs):
            self._drop_tab(t)
        if self.cdp is not None:
            with contextlib.suppress(BrowserGone, CdpError, TimeoutError):
                await self.cdp.call("Target.disposeBrowserContext", {"browserContextId": sess.context_id},
                                    timeout=5.0)
        shutil.rmtree(sess.downloads, ignore_errors=True)

    async def new_tab(self, sess: Session, url: str, deadline: float) -> Tab:
        assert self.cdp is not None
        res = await self.cdp.call("Target.createTarget", {"url": "about:blank", "browserContextId": sess.context_id},
                                  timeout=_left(deadline))
        tid = res["targetId"]
        while tid not in self.tabs or not self.tabs[tid].ready.is_set():  # set up by _attached
            if self.cdp.closed:
                raise BrowserGone("the browser exited")
            await asyncio.sleep(0.01)
            if time.monotonic() > deadline:
                raise TimeoutError
        sess.active = tid
        tab = self.tabs[tid]
        if url:
            await self.goto(tab, url, deadline, sess)
        return tab

    def active_tab(self, sess: Session | None, key: str) -> Tab:
        tab = self.tabs.get(sess.active) if sess is not None else None
        if tab is None:
            if key in self.lost:
                raise ActionError("no page is open: the browser exited and was started again, which closed this "
                                  "session's tabs; open the page again with browser_navigate")
            raise ActionError("no page is open in this session: call browser_navigate first")
        if tab.crashed:
            raise ActionError("this tab's page crashed; browser_navigate opens it again")
        return tab

    # ----------------------------------------------------------------- actions

    async def act(self, p: m.BrowserParams) -> tuple[str, bytes | None]:
        deadline = time.monotonic() + p.timeout_s
        self.allow = list(p.allow)
        try:
            try:
                return await asyncio.wait_for(self._act(p, deadline), timeout=p.timeout_s + 1.0)
            except BrowserGone:
                if p.action != "navigate" or time.monotonic() > deadline - 1.0:
                    raise
                # Chromium died under a navigation: opening the page again in a new
                # Chromium is the same request, so it is made once more.
                log.warning("browser_navigate_retried_after_exit")
                return await asyncio.wait_for(self._act(p, deadline), timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            raise ActionError(f"browser_{p.action} did not finish within {p.timeout_s:g} s "
                              "([browser] action_timeout_s)") from None
        except BrowserGone:
            raise ActionError(f"Chromium exited during browser_{p.action}; it starts again on the next browser "
                              "call, and this session's tabs are gone (browser_navigate opens a page again)") from None

    async def _act(self, p: m.BrowserParams, deadline: float) -> tuple[str, bytes | None]:
        if p.action == "close":
            sess = self.sessions.get(p.session)
            if sess is None:
                return "no browser session was open", None
            await self._close_session(sess)
            return "closed this session's browser context and its tabs", None
        creates = p.action in ("navigate", "tabs")
        sess = await self.session(p, deadline, create=creates)
        if sess is not None:
            sess.last_used = time.monotonic()
        lock = sess.lock if sess is not None else asyncio.Lock()
        async with lock:
            if p.action == "navigate":
                assert sess is not None
                return await self._navigate(sess, p, deadline), None
            if p.action == "tabs":
                assert sess is not None
                return await self._tabs(sess, p, deadline), None
            tab = self.active_tab(sess, p.session)
            if p.action == "snapshot":
                return await self.snapshot(tab, deadline), None
            if p.action == "click":
                return await self._click(tab, p, deadline), None
            if p.action == "type":
                return await self._type(tab, p, deadline), None
            if p.action == "select":
                return await self._select(tab, p, deadline), None
            if p.action == "press":
                return await self._press(tab, p, deadline), None
            if p.action == "wait_for":
                return await self._wait_for(tab, p, deadline), None
            if p.action == "screenshot":
                return await self._screenshot(tab, p, deadline)
            if p.action == "evaluate":
                return await self._evaluate(tab, p, deadline), None
        raise ActionError(f"unknown browser action {p.action!r}")

    async def call(self, tab: Tab, method: str, params: dict[str, Any], deadline: float) -> dict[str, Any]:
        assert self.cdp is not None
        return await self.cdp.call(method, params, tab.cdp_session, timeout=_left(deadline))

    async def goto(self, tab: Tab, url: str, deadline: float, sess: Session) -> str:
        self.check_url(url, sess, self.allow)
        tab.blocked.clear()
        tab.loading = True
        tab.stopped.clear()
        res = await self.call(tab, "Page.navigate", {"url": url}, deadline)
        if not res.get("loaderId"):
            tab.loading = False  # same document (a #fragment): nothing loads
        if res.get("errorText"):
            tab.loading = False
            if tab.blocked or "BLOCKED_BY_CLIENT" in res["errorText"]:
                raise ActionError(f"url: {url!r}: the page was sent to {tab.blocked[-1] if tab.blocked else url!r},"
                                  f" which is not in [browser] allow: refused")
            raise ActionError(f"url: {url!r} did not load: {res['errorText']}")
        return await self._settled(tab, deadline)

    async def _settled(self, tab: Tab, deadline: float) -> str:
        """Wait (up to the deadline) until a load the action started is over; a note
        for the answer when it is not."""
        if tab.loading:
            try:
                await asyncio.wait_for(tab.stopped.wait(), timeout=max(0.0, _left(deadline) - 0.5))
            except TimeoutError:
                return "(the page was still loading when the action's time ran out)"
        return ""

    async def snapshot(self, tab: Tab, deadline: float, note: str = "") -> str:
        ax = await self.call(tab, "Accessibility.getFullAXTree", {}, deadline)
        body = render(ax.get("nodes") or [], tab.refs)
        with contextlib.suppress(CdpError):
            info = await self.call(tab, "Runtime.evaluate", {"expression": "[location.href, document.title]",
                                                             "returnByValue": True}, deadline)
            tab.url, tab.title = info["result"]["value"]
        head = [f"Page: {tab.url}", f"Title: {tab.title}"]
        if tab.blocked:
            head.append("Blocked (not in [browser] allow): " + ", ".join(tab.blocked[-3:]))
        if tab.dialogs:
            head.append("Dialogs answered: " + " | ".join(tab.dialogs))
            tab.dialogs.clear()
        if note:
            head.append(note)
        return "\n".join(head) + "\n\n" + body

    async def _navigate(self, sess: Session, p: m.BrowserParams, deadline: float) -> str:
        if not p.url:
            raise ActionError("url: give the address to open")
        tab = self.tabs.get(sess.active)
        if tab is None or tab.crashed:
            tab = await self.new_tab(sess, "", deadline)
        note = await self.goto(tab, p.url, deadline, sess)
        return await self.snapshot(tab, deadline, note)

def _left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


class BrowserBackend(MediaBackend):
    """See the module docstring. Options (``[models.options]``): ``max_concurrency``
    (actions in flight at once, all sessions; 8)."""

    kind = "browser"

    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec, int(spec.options.get("max_concurrency", 8)))
        self.loop = asyncio.new_event_loop()
        self.workdir = _temp_workdir()
        self.browser: Browser | None = None
        self._thread = threading.Thread(target=self._run, name="browser", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def load(self) -> None:
        self._thread.start()
        self.browser = asyncio.run_coroutine_threadsafe(self._make(), self.loop).result()
        atexit.register(self._at_exit)
        exe = find_executable(str(self.spec.options.get("executable", "")))
        log.info("browser_backend_ready", chromium=exe or f"not found: {INSTALL_HINT}")

    async def _make(self) -> Browser:
        return Browser(self.workdir)

    def _at_exit(self) -> None:
        """The worker is exiting (SIGTERM: the supervisor's stop ladder): Chromium's
        process group goes with it, and its profile. (A SIGKILLed worker's Chromium
        gets SIGKILL from Linux: PR_SET_PDEATHSIG, workers/cdp.py.)"""
        chromium = self.browser.chromium if self.browser is not None else None
        if chromium is not None and chromium.pid:
            kill_group(chromium.pid)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run_job(self, request_id: str, job: m.Job, frames: list[zmq.Frame],
                ctx: GenContext) -> Generator[GenItem, None, None]:
        p = job.params
        if not isinstance(p, m.BrowserParams):
            raise BackendError("invalid_request", "the browser worker runs browser actions only")
        assert self.browser is not None
        fut = asyncio.run_coroutine_threadsafe(self.browser.act(p), self.loop)
        wait_ns = 1_000_000
        try:
            while not fut.done():
                # The answer comes from another thread: look again shortly (growing
                # to 20 ms), letting other requests and heartbeats run meanwhile.
                yield Pause(time.monotonic_ns() + wait_ns)
                wait_ns = min(wait_ns * 2, 20_000_000)
            try:
                text, png = fut.result()
            except ActionError as e:
                raise BackendError("invalid_request", str(e)) from None
        finally:
            fut.cancel()  # a cancel (the client went away) stops the action too
        if png is not None:
            yield WithFrames(m.JobOutput(request_id, 0, media_type="image/png", text=text), [png])
        else:
            yield m.JobOutput(request_id, 0, text=text)
        yield m.Done(request_id, 0, "end_turn", m.Usage(0, 0))


def create(spec: WorkerSpec) -> BrowserBackend:
    return BrowserBackend(spec)
