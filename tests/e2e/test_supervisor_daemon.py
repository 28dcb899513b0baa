"""``turnout up --daemon`` / status / ps / scale / logs / down through the real CLI,
leaving no process, socket or pidfile behind; and the one-line answer when no
daemon is running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from supervisor.control import logfile_path, pidfile_path
from supervisor.launch import free_port

CONFIG = """
[[models]]
name = "fake"
backend = "fake"
[models.options]
reply_tokens = 4
"""


def turnout(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TURNOUT_TOKEN="test-token-0123456789")
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_status_without_a_daemon_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    for cmd in (["status"], ["ps", "--json"], ["down"], ["scale", "fake", "2"], ["load", "fake"], ["evict", "fake"]):
        r = turnout(*cmd, "--port", str(port))
        assert r.returncode == 1, (cmd, r)
        assert r.stdout == ""
        assert r.stderr.strip() == (f"turnout: not running on port {port} "
                                     "(start it with `turnout up --daemon`)"), r.stderr


def test_a_supervisor_that_does_not_answer_is_not_called_stopped() -> None:
    # A control socket that is there but silent (a busy or hung supervisor).
    import zmq

    from protocol.sockets import Endpoints

    runtime = Path(tempfile.mkdtemp(prefix="to-", dir="/tmp"))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    try:
        sock.bind(Endpoints(str(runtime)).control)
        port = free_port()
        r = turnout("status", "--port", str(port), "--runtime-dir", str(runtime), "--timeout", "0.3")
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.strip() == (f"turnout: turnout on port {port} did not answer within 0.3 s "
                                     "(busy or hung: see `turnout logs`)"), r.stderr
        assert sock.poll(1000)  # it did ask
    finally:
        sock.close(0)
        ctx.term()
        for f in runtime.iterdir():
            f.unlink()
        runtime.rmdir()


def test_daemon_up_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG)
    port = free_port()
    runtime = Path(tempfile.mkdtemp(prefix="to-", dir="/tmp"))
    os.rmdir(runtime)
    inst = ["--port", str(port), "--runtime-dir", str(runtime)]
    up = turnout("up", "--daemon", "--config", str(cfg), *inst)
    pid = 0
    try:
        assert up.returncode == 0, up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout
        pid = int(pidfile_path(port).read_text())
        sup = psutil.Process(pid)
        assert sup.ppid() != os.getpid()  # detached: not our child
        assert os.getsid(pid) == pid  # its own session
        again = turnout("up", "--daemon", "--config", str(cfg), *inst)
        assert again.returncode == 1 and "already running" in again.stderr
        ps = turnout("ps", "--json", *inst)
        assert ps.returncode == 0, ps.stderr
        st = json.loads(ps.stdout)
        assert st["supervisor_pid"] == pid and st["port"] == port
        assert [w["id"] for w in st["workers"]] == ["fake-0"]
        assert st["workers"][0]["state"] in ("starting", "loading", "ready")
        table = turnout("status", *inst)
        assert "WORKER" in table.stdout and "IN-FLIGHT" in table.stdout and "fake-0" in table.stdout
        sc = turnout("scale", "fake", "2", *inst)
        assert sc.returncode == 0 and "fake=2" in sc.stdout
        ld = turnout("load", "fake", *inst)
        assert ld.returncode == 0 and "fake is ready" in ld.stdout, ld
        kids = sup.children(recursive=True)
        assert len(kids) >= 3  # gateway + 2 workers
        logs = turnout("logs", "-n", "0", *inst)
        assert logs.returncode == 0 and '"event":"spawned"' in logs.stdout.replace('": "', '":"')
        assert logfile_path(port).exists()
        down = turnout("down", *inst)
        assert down.returncode == 0 and "stopped" in down.stdout, down
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        assert not pidfile_path(port).exists()
        assert not runtime.exists() or not list(runtime.iterdir())
        after = turnout("status", *inst)
        assert after.returncode == 1 and "not running" in after.stderr
    finally:
        if pid and psutil.pid_exists(pid):  # a failed test must not leave a daemon
            for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                p.kill()
