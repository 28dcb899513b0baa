"""Thin process handles: spawn a child, stop it with a timed ladder.

Children are started with ``subprocess.Popen`` running ``python -m ...`` (a fresh
interpreter: the spawn method, never fork, because model runtimes and threads do not
survive a fork).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil


@dataclass
class Child:
    """One running child process and what the arbiter knows about it."""

    id: str
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def tree_rss(self) -> int:
        """RSS of the process and its children, in bytes (0 if gone)."""
        try:
            p = psutil.Process(self.pid)
            total = p.memory_info().rss
            for c in p.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return 0


def spawn(child_id: str, module: str, args: list[str], env: dict[str, str] | None = None) -> Child:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    popen = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=full_env,
        stdin=subprocess.DEVNULL,
        # stdout/stderr are inherited: every process logs to the supervisor's stderr
        close_fds=True,
    )
    return Child(child_id, popen)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def stop_ladder(children: Iterable[Child], grace_s: float = 5.0, kill_wait_s: float = 2.0) -> None:
    """SIGTERM every child, wait up to ``grace_s``, SIGKILL what is left of each
    process tree, then reap. Returns when every child has been reaped."""
    kids = [c for c in children if c.poll() is None]
    trees = {c.id: _tree(c.pid) for c in kids}
    for c in kids:
        try:
            c.popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(c.poll() is None for c in kids):
        time.sleep(0.02)
    for c in kids:
        procs = [p for p in trees.get(c.id, []) if p.is_running()]
        if c.poll() is None:
            procs = [p for p in _tree(c.pid) if p.is_running()] or procs
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=kill_wait_s)
    for c in kids:
        try:
            c.popen.wait(timeout=kill_wait_s)
        except subprocess.TimeoutExpired:
            pass


def kill_now(child: Child) -> None:
    """SIGKILL a child's whole tree (a hung or wedged worker)."""
    for p in _tree(child.pid):
        try:
            p.kill()
        except psutil.Error:
            pass
