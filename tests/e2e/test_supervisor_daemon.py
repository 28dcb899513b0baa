"""``turnout up --daemon`` / status / ps / scale / logs / down through the real CLI,
leaving no process, socket or pidfile behind; and the one-line answer when no
daemon is running."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from tests.helpers import other_user, poll_until
from turnout.supervisor.control import logfile_path, pidfile_path
from turnout.supervisor.launch import free_port

CONFIG = """
[[models]]
name = "fake"
backend = "fake"
[models.options]
reply_tokens = 4
"""


def turnout(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TURNOUT_TOKEN="test-token-0123456789")
    return subprocess.run([sys.executable, "-m", "turnout.cli", *args], capture_output=True, text=True,
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

    from turnout.protocol.sockets import Endpoints

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


# ------------------------------------------- issue 14: the daemon's log

CAP = 20_000  # bytes per log file in this test (TURNOUT_LOG_MAX_BYTES)


def _json_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        rec = json.loads(line)  # every line, whatever wrote it
        assert isinstance(rec, dict), line
        out.append(rec)
    return out


def test_daemon_log_is_private_rotates_and_every_line_is_json_even_a_crash(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="home-", dir="/tmp"))
    os.chmod(home, 0o755)  # a home other users may enter, as many are
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG)
    port = free_port()
    runtime = Path(tempfile.mkdtemp(prefix="to-", dir="/tmp"))
    os.rmdir(runtime)
    inst = ["--port", str(port), "--runtime-dir", str(runtime)]
    env = dict(os.environ, TURNOUT_TOKEN="test-token-0123456789", XDG_STATE_HOME=str(home / "state"),
               TURNOUT_LOG_MAX_BYTES=str(CAP))
    # What an older turnout left: a 0755 state dir and a 0644 log.
    logdir = home / "state" / "turnout" / str(port)
    logdir.mkdir(parents=True, mode=0o755)
    os.chmod(logdir, 0o755)
    os.chmod(logdir.parent, 0o755)
    log = logdir / "turnout.log"
    log.write_text('{"event":"old"}\n')
    os.chmod(log, 0o644)
    pid = 0
    try:
        up = subprocess.run([sys.executable, "-m", "turnout.cli", "up", "--daemon", "--config", str(cfg), *inst],
                            capture_output=True, text=True, timeout=60, env=env)
        assert up.returncode == 0, up.stderr
        pid = int((logdir / "turnout.pid").read_text())
        for d in (logdir.parent, logdir):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        if os.geteuid() == 0:  # another local user cannot read it
            r = subprocess.run(other_user("cat", str(log)), capture_output=True)
            assert r.returncode != 0 and b"spawned" not in r.stdout
        # A native crash of a worker: Python's fault handler writes a multi-line dump.
        worker = next(p for p in psutil.Process(pid).children(recursive=True)
                      if "turnout.workers.main" in " ".join(p.cmdline()))
        os.kill(worker.pid, signal.SIGSEGV)
        poll_until(lambda: "Fatal Python error" in log.read_text(errors="replace"), 20)
        # A request whose header holds a NUL (aiohttp's parser refuses it).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: a\x00b\r\n\r\n")
            s.recv(4096)
        # Enough lines to rotate a few times.
        for _ in range(400):
            with contextlib.suppress(urllib.error.URLError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
        down = turnout("down", *inst)
        assert down.returncode == 0, down
        pid = 0
        poll_until(lambda: "stopped" in log.read_text(errors="replace"), 10)
        files = sorted(logdir.glob("turnout.log*"))
        assert [f.name for f in files] == ["turnout.log", "turnout.log.1", "turnout.log.2", "turnout.log.3"]
        records = []
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            assert f.stat().st_size <= CAP + 70_000, f  # the cap, plus at most one record
            records += _json_lines(f)
        crash = [r for r in records if "Fatal Python error" in str(r.get("text", ""))]
        assert len(crash) == 1 and crash[0]["level"] == "error", crash
        assert 'File "' in str(crash[0]["text"])  # the traceback is in the one record
    finally:
        if pid and psutil.pid_exists(pid):
            for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                p.kill()
        shutil.rmtree(home, ignore_errors=True)
