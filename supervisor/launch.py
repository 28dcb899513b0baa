"""Run ``turnout up`` as a child process and wait for it: used by the tests, the
benchmarks and anything else that needs a whole turnout (real processes, real
sockets) and must leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import cast

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TurnoutProcess:
    """One ``turnout up`` under a private runtime dir, token and log file.

    Options:
        config_toml: the config file's text (``[server]`` host/port are set by
            --host/--port, so leave them out); None: no config file at all, as a
            new user runs it (the user's own config directory is not looked at).
        env: extra environment (e.g. TURNOUT_LOG_LEVEL).
        workdir: where the config, log and runtime dir go (a temp dir by default).
        cli: the module that is the ``turnout`` command (another checkout's, in an
            A/B benchmark: ``supervisor.cli`` before the turnout namespace).
        cwd: the processes' working directory (an A/B benchmark runs each tree from its own).
    """

    def __init__(self, config_toml: str | None, *, env: dict[str, str] | None = None,
                 workdir: str | None = None, token: str = "test-token-0123456789",
                 cli: str = "turnout.cli", cwd: str | None = None) -> None:
        self.cli = cli
        self.cwd = cwd
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="turnout-"))
        self.port = free_port()
        self.token = token
        self.base_url = f"http://127.0.0.1:{self.port}"
        # Short: ipc paths are limited to ~100 bytes.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="to-", dir="/tmp"))
        os.rmdir(self.runtime_dir)  # turnout creates it 0700 itself
        self.config_path: Path | None = None
        if config_toml is not None:
            self.config_path = self.workdir / "config.toml"
            self.config_path.write_text(config_toml)
        self.log_path = self.workdir / "turnout.log"
        self.env = dict(os.environ)
        # State (routing switches, a daemon's pidfile) under the workdir, not the user's home.
        self.env.update({"TURNOUT_TOKEN": token, "PYTHONUNBUFFERED": "1",
                         "XDG_STATE_HOME": str(self.workdir / "state")})
        if config_toml is None:
            self.env.pop("TURNOUT_CONFIG", None)
            self.env["XDG_CONFIG_HOME"] = str(self.workdir / "config")  # empty: no config.toml there
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._descendants: list[psutil.Process] = []

    def start(self, wait: bool = True, timeout: float = 60.0) -> TurnoutProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.cli, "up",
             *(["--config", str(self.config_path)] if self.config_path is not None else []),
             "--host", "127.0.0.1", "--port", str(self.port), "--runtime-dir", str(self.runtime_dir)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
        )
        if wait:
            self.wait_healthy(timeout)
        return self

    def healthz(self) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnout exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = self.healthz()
                if status == 200:
                    self._descendants = self.descendants()
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"turnout not healthy after {timeout}s:\n{self.log_tail()}")

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def worker_pids(self) -> dict[str, int]:
        """pid of each worker, from the admin API."""
        return {str(w["id"]): cast(int, w["pid"]) for w in self.admin_workers()}

    def admin_workers(self) -> list[dict[str, object]]:
        req = urllib.request.Request(self.base_url + "/admin/workers", headers={"x-api-key": self.token})
        with urllib.request.urlopen(req, timeout=5) as r:
            return list(json.loads(r.read()))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait. Returns the exit code; kills everything on timeout."""
        if self.proc is None:
            return 0
        kids = self.descendants() or self._descendants
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for p in [psutil.Process(self.proc.pid), *kids]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            code = self.proc.wait(5)
        psutil.wait_procs([k for k in kids if k.is_running()], timeout=5)
        self._descendants = kids
        self._log.close()
        return code

    def leftovers(self) -> list[str]:
        """Processes or socket files still present after stop()."""
        out = [f"process {p.pid}" for p in self._descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if self.runtime_dir.exists():
            out.extend(f"file {f}" for f in self.runtime_dir.iterdir())
        return out
