"""A headless Chromium and the Chrome DevTools Protocol (CDP) connection to it.

CDP runs over ``--remote-debugging-pipe`` (fd 3: Chromium reads, fd 4: it writes;
each message a JSON object ended by a NUL byte), not over a WebSocket on a TCP port:
a debugging port on 127.0.0.1 is open to every local user, and whoever reaches it
drives the browser, cookies and all. The pipe is ours alone.

Roles: :class:`Chromium` starts the process (its own temp profile directory, a
private temp dir for downloads) and kills its process tree on close;
:class:`CdpConnection` is the only reader and writer of the pipe (one asyncio task
reads, calls write), matches answers to calls by ``id`` and hands events to a
callback. When Chromium dies the read task sees end of file and every pending call
fails with :class:`BrowserGone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger()

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Where macOS keeps them (not on PATH).
APP_PATHS = ("/Applications/Chromium.app/Contents/MacOS/Chromium",
             "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome")
INSTALL_HINT = ("install Chromium (Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install --cask "
                "chromium) or Google Chrome, or set [browser] executable to its path")

# fd 3/4 are where Chromium looks for the pipe; this helper puts the pipe's ends
# there and execs Chromium (subprocess cannot place an fd at a given number by
# itself, and a preexec_fn in a threaded process is unsafe). It also asks Linux to
# kill Chromium when the worker thread that started it dies (PR_SET_PDEATHSIG).
_EXEC_HELPER = (
    "import os,sys\n"
    "if sys.platform == 'linux':\n"
    "    import ctypes\n"
    "    try: ctypes.CDLL('libc.so.6').prctl(1, 9)\n"
    "    except OSError: pass\n"
    "r, w = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.dup2(r, 3); os.dup2(w, 4)\n"
    "[os.close(f) for f in (r, w) if f not in (3, 4)]\n"
    "os.set_inheritable(3, True); os.set_inheritable(4, True)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


class BrowserGone(Exception):
    """Chromium exited (or its pipe closed) while a call waited."""


class CdpError(Exception):
    """A CDP call answered with an error."""

    def __init__(self, method: str, message: str) -> None:
        super().__init__(f"{method}: {message}")
        self.method = method
        self.message = message


def find_executable(configured: str = "") -> str | None:
    """The Chromium to run: ``configured`` (a path or a name on PATH), else the first
    of :data:`CANDIDATES` on PATH, else a macOS app (:data:`APP_PATHS`); None when
    there is none."""
    if configured:
        return shutil.which(configured) or (configured if os.access(configured, os.X_OK) else None)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    for path in APP_PATHS:
        if os.access(path, os.X_OK):
            return path
    return None


class CdpConnection:
    """One CDP connection over a pipe pair (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.WriteTransport,
                 on_event: Callable[[dict[str, Any]], None]) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str = "",
                   timeout: float = 30.0) -> dict[str, Any]:
        """Send ``method`` (to the target of ``session``, "" for the browser) and wait
        for its result; :class:`CdpError` for an error answer, :class:`BrowserGone` if
        Chromium goes, TimeoutError after ``timeout``."""
        if self.closed:
            raise BrowserGone("the browser is not running")
        cid = next(self._ids)
        msg: dict[str, Any] = {"id": cid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = (method, fut)
        try:
            self._writer.write(json.dumps(msg).encode() + b"\0")
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(cid, None)

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await self._reader.readuntil(b"\0")
                try:
                    msg = json.loads(raw[:-1])
                except ValueError:
                    continue
                cid = msg.get("id")
                if cid is not None:
                    pending = self._pending.get(cid)
                    if pending is None or pending[1].done():
                        continue  # a call that timed out: its late answer is dropped
                    method, fut = pending
                    if "error" in msg:
                        fut.set_exception(CdpError(method, str(msg["error"].get("message", msg["error"]))))
                    else:
                        fut.set_result(msg.get("result") or {})
                else:
                    try:
                        self._on_event(msg)
                    except Exception as e:  # an event handler bug must not stop the reader
                        log.error("cdp_event_handler_failed", error=repr(e), method=msg.get("method"))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self.closed = True
            for _method, fut in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(BrowserGone("the browser exited"))
            self._pending.clear()
            with contextlib.suppress(Exception):
                self._on_event({"method": "turnout.closed", "params": {}})

    def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()


class Chromium:
    """A headless Chromium process with a temp profile (see the module docstring).

    Options: ``executable`` (the binary), ``workdir`` (where the profile and the
    downloads go; removed on close)."""

    def __init__(self, executable: str, workdir: str) -> None:
        self.executable = executable
        self.workdir = workdir
        self.profile = os.path.join(workdir, "profile")
        self.proc: asyncio.subprocess.Process | None = None
        self.cdp: CdpConnection | None = None

    async def start(self, on_event: Callable[[dict[str, Any]], None], timeout: float = 30.0) -> CdpConnection:
        os.makedirs(self.profile, mode=0o700, exist_ok=True)
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        args = [
            "--headless", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
            "--password-store=basic", "--use-mock-keychain", "--metrics-recording-only",
            "--disable-features=Translate,MediaRouter,OptimizationHints", "--window-size=1280,800",
            # a tab behind another (a popup opened) keeps its timers and frames running
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Chromium refuses to run its sandbox as root; the page processes then run
            # without it (README: run turnout as a normal user for the sandbox).
            args.append("--no-sandbox")
        args.append("about:blank")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _EXEC_HELPER, str(to_chrome_r), str(from_chrome_w), self.executable, *args,
                pass_fds=(to_chrome_r, from_chrome_w), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
                cwd=self.workdir)
        finally:
            os.close(to_chrome_r)
            os.close(from_chrome_w)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=256 * 2**20)  # a full-page screenshot is one message
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_chrome_r, "rb", 0))
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(to_chrome_w, "wb", 0))
        self.cdp = CdpConnection(reader, writer, on_event)
        try:
            await self.cdp.call("Browser.getVersion", timeout=timeout)
        except BaseException:
            await self.close()
            raise
        log.info("browser_started", pid=self.proc.pid, executable=self.executable)
        return self.cdp

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.cdp is not None and not self.cdp.closed

    async def close(self, grace: float = 2.0) -> None:
        """Ask Chromium to quit, then kill its process group; remove the profile."""
        if self.cdp is not None and not self.cdp.closed:
            with contextlib.suppress(Exception):
                await self.cdp.call("Browser.close", timeout=grace)
        if self.proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), grace)
            kill_group(self.proc.pid)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), grace)
        if self.cdp is not None:
            self.cdp.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def kill_group(pid: int) -> None:
    """SIGKILL Chromium's process group (its renderers, GPU and zygote processes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def temp_workdir() -> str:
    return tempfile.mkdtemp(prefix="turnout-browser-")
