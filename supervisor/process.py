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

from turnout.protocol.spawn import spec_file

CHILDREN_RESCAN_S = 10.0


@dataclass
class Child:
    """One running child process and what the arbiter knows about it."""

    id: str
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    _proc: psutil.Process | None = field(default=None, repr=False)
    _kids: list[psutil.Process] = field(default_factory=list, repr=False)
    _kids_at: float = field(default=-1e9, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def terminate(self) -> None:
        """SIGTERM (the first rung of the stop ladder)."""
        try:
            self.popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL of the whole tree (a hung or wedged worker)."""
        kill_now(self)

    def tree_rss(self) -> int:
        """RSS of the process and its children, in bytes (0 if gone).

        Finding the children walks the whole process table (a few ms, more on a
        busy desktop), so it is redone every ``CHILDREN_RESCAN_S``; in between,
        only the known processes are read (a worker rarely has children at all)."""
        now = time.monotonic()
        try:
            if self._proc is None:
                self._proc = psutil.Process(self.pid)
            total = self._proc.memory_info().rss
        except psutil.Error:
            return 0
        if now - self._kids_at >= CHILDREN_RESCAN_S:
            self._kids_at = now
            try:
                self._kids = self._proc.children(recursive=True)
            except psutil.Error:
                self._kids = []
        for c in self._kids:
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total


def spawn(child_id: str, module: str, spec: bytes, *, env: dict[str, str] | None = None,
          spec_dir: str | None = None) -> Child:
    """Start ``python -m MODULE`` with ``spec`` (JSON) on its stdin, never on its
    command line (protocol/spawn.py). ``spec_dir``: where the spec's unnamed 0600
    file is made (the instance's 0700 runtime directory)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with spec_file(spec, spec_dir) as stdin:
        popen = subprocess.Popen(
            [sys.executable, "-m", module],
            env=full_env,
            stdin=stdin,
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
