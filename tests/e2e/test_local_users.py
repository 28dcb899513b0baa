"""Issue 14, item 2: another local user against turnout's runtime directory, and a
fake supervisor against the CLI. Real processes and sockets; the other user is
``nobody``, through setpriv (skipped where the tests do not run as root).

The attacks, as the issue describes them: with ``XDG_RUNTIME_DIR`` unset, turnout
falls back to ``$TMPDIR/turnout-<uid>``; another user who made that directory first
(mode 777) got turnout's sockets inside it, could swap in a ``control`` socket of
their own, and ``turnout down`` then SIGKILLed the process tree of whatever pid the
fake supervisor named.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import psutil
import pytest

from tests.helpers import OTHER_UID, ROOT, other_user, other_user_python, poll_until
from tests.supervisor.helpers import command, status
from turnout.protocol import messages as m
from turnout.supervisor.launch import TurnoutProcess, free_port

CONFIG = """
[[models]]
name = "fake"
backend = "fake"
[models.options]
reply_tokens = 4
"""

FAKE_SUPERVISOR = str(ROOT / "tests" / "e2e" / "fake_supervisor.py")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A shared temp directory like /tmp (1777), short enough for ipc paths."""
    d = Path(tempfile.mkdtemp(prefix="shared-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours that a fake supervisor names as its own pid."""
    p = subprocess.Popen(["sleep", "300"])
    yield p
    p.kill()
    p.wait()


def _env(tmp_path: Path, tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=str(tmpdir), TURNOUT_TOKEN="test-token-0123456789",
               XDG_STATE_HOME=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("TURNOUT_RUNTIME_DIR", None)
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turnout.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


class Up(subprocess.Popen[bytes]):
    """`turnout up` with its output in files: a pipe that nobody drains blocks the
    process once full, and reading a pipe that an orphaned child still holds never
    returns."""

    err_path: Path


def _up(tmp_path: Path, env: dict[str, str], port: int) -> Up:
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG)
    err_path = tmp_path / "up.stderr"
    with open(tmp_path / "up.stdout", "wb") as out, open(err_path, "wb") as err:
        p = Up([sys.executable, "-m", "turnout.cli", "up", "--config", str(cfg), "--port", str(port)],
               stdout=out, stderr=err, env=env)
    p.err_path = err_path
    return p


def _finish(p: Up, timeout: float) -> tuple[int | None, str]:
    """(exit code or None if it was still running after ``timeout``, stderr)."""
    try:
        p.wait(timeout)
        code: int | None = p.returncode
    except subprocess.TimeoutExpired:
        code = None
        kids = psutil.Process(p.pid).children(recursive=True)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass
    return code, p.err_path.read_text(errors="replace")


def _start_fake(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    fake = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
    assert fake.stdout is not None
    line = fake.stdout.readline()
    assert line.strip() == "ready", (line, fake.stderr.read() if fake.poll() is not None and fake.stderr else "")
    return fake


def _one_clear_line(err: str) -> None:
    assert "Traceback" not in err, err
    assert err.startswith("turnout: ") and err.count("\n") == 1, err


def test_up_refuses_a_runtime_dir_another_user_made_first(shared: Path, tmp_path: Path) -> None:
    trap = shared / f"turnout-{os.getuid()}"
    subprocess.run(other_user("mkdir", "-m", "777", str(trap)), check=True)
    port = free_port()
    p = _up(tmp_path, _env(tmp_path, shared), port)
    poll_until(lambda: p.poll() is not None or (trap / str(port) / "control").exists(), 30)
    inside = [str(f) for f in trap.rglob("*")]
    code, err = _finish(p, 5)
    assert inside == [], "turnout created its sockets in another user's directory"
    assert code == 2, err
    _one_clear_line(err)
    assert str(trap) in err and f"uid {OTHER_UID}" in err, err


def test_daemon_up_says_so_on_the_terminal(shared: Path, tmp_path: Path) -> None:
    trap = shared / f"turnout-{os.getuid()}"
    subprocess.run(other_user("mkdir", "-m", "777", str(trap)), check=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG)
    r = _cli("up", "--daemon", "--config", str(cfg), "--port", str(free_port()), env=_env(tmp_path, shared))
    assert r.returncode == 2, r
    _one_clear_line(r.stderr)
    assert f"uid {OTHER_UID}" in r.stderr and list(trap.iterdir()) == [], r.stderr


def test_an_instance_dir_another_user_made_first_is_a_clear_error(shared: Path, tmp_path: Path) -> None:
    port = free_port()
    trap = shared / f"turnout-{os.getuid()}"
    subprocess.run(other_user("mkdir", "-m", "777", "-p", str(trap / str(port))), check=True)
    code, err = _finish(_up(tmp_path, _env(tmp_path, shared), port), 20)
    assert code == 2, err
    _one_clear_line(err)
    assert f"uid {OTHER_UID}" in err, err


def test_cli_does_not_trust_a_control_socket_in_another_users_dir(
        shared: Path, tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    port = free_port()
    inst = shared / f"turnout-{os.getuid()}" / str(port)
    subprocess.run(other_user("mkdir", "-m", "777", "-p", str(inst)), check=True)
    argv, env = other_user_python(FAKE_SUPERVISOR, str(inst / "control"), str(victim.pid))
    fake = _start_fake(argv, env)
    try:
        cli_env = _env(tmp_path, shared)
        down = _cli("down", "--port", str(port), "--wait", "1", env=cli_env)
        assert victim.poll() is None, "turnout down killed the process a fake supervisor named"
        assert down.returncode == 1, down
        _one_clear_line(down.stderr)
        assert f"uid {OTHER_UID}" in down.stderr, down.stderr
        st = _cli("status", "--port", str(port), env=cli_env)
        assert st.returncode == 1 and st.stdout == "", st
        _one_clear_line(st.stderr)
    finally:
        fake.kill()
        fake.wait()


def test_cli_checks_the_peer_not_only_the_socket_file(tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    # The directory and the socket file look right (ours, 0700), but the process
    # listening on it is another user's: only its peer credentials tell.
    d = Path(tempfile.mkdtemp(prefix="to-", dir="/tmp"))
    try:
        argv, env = other_user_python(FAKE_SUPERVISOR, str(d / "control"), str(victim.pid))
        os.chown(d, OTHER_UID, OTHER_UID)
        fake = _start_fake(argv, env)
        try:
            os.chown(d / "control", os.getuid(), os.getgid())
            os.chmod(d / "control", 0o700)
            os.chown(d, os.getuid(), os.getgid())
            cli_env = _env(tmp_path, Path("/tmp"))
            st = _cli("status", "--runtime-dir", str(d), env=cli_env)
            assert st.returncode == 1 and st.stdout == "", st
            _one_clear_line(st.stderr)
            assert f"uid {OTHER_UID}" in st.stderr, st.stderr
            down = _cli("down", "--runtime-dir", str(d), "--wait", "1", env=cli_env)
            assert victim.poll() is None, "turnout down killed the process a fake supervisor named"
            assert down.returncode == 1, down
        finally:
            fake.kill()
            fake.wait()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_down_never_kills_a_pid_it_has_not_verified(tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    # Same user, private directory: a process that is not turnout answers on the
    # control socket and names another process of ours as the supervisor.
    d = Path(tempfile.mkdtemp(prefix="to-", dir="/tmp"))
    fake = _start_fake([sys.executable, FAKE_SUPERVISOR, str(d / "control"), str(victim.pid)],
                       dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        down = _cli("down", "--runtime-dir", str(d), "--wait", "1", env=_env(tmp_path, Path("/tmp")))
        assert victim.poll() is None, "turnout down killed the process a fake supervisor named"
        assert down.returncode == 1, down
        _one_clear_line(down.stderr)
        assert str(victim.pid) in down.stderr and "not turnout's supervisor" in down.stderr, down.stderr
    finally:
        fake.kill()
        fake.wait()
        shutil.rmtree(d, ignore_errors=True)


def test_plain_up_without_xdg_runtime_dir_makes_private_dirs_and_down_stops_it(
        shared: Path, tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, shared)
    p = _up(tmp_path, env, port)
    try:
        base = shared / f"turnout-{os.getuid()}"
        poll_until(lambda: (base / str(port) / "control").exists() or p.poll() is not None, 30)
        assert p.poll() is None
        for d in (base, base / str(port)):
            st = d.lstat()
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid(), d
            assert stat.S_IMODE(st.st_mode) == 0o700, (d, oct(st.st_mode))
        poll_until(lambda: _cli("status", "--port", str(port), env=env).returncode == 0, 30)
        down = _cli("down", "--port", str(port), env=env)
        assert down.returncode == 0 and "stopped" in down.stdout, down
        code, err = _finish(p, 20)
        assert code == 0, err
    finally:
        if p.poll() is None:
            _finish(p, 0)


# ------------------------------------------------------------------- item 3: argv

SECRET_CONFIG = """
[[models]]
name = "fake"
backend = "fake"
aliases = ["fake-alias-on-argv"]
[models.options]
reply_tokens = 4

[[endpoints]]
name = "mine"
provider = "openai_compatible"
base_url = "http://alice:pw-SECRET-in-url@127.0.0.1:9/v1"
key = ""
[[endpoints.models]]
name = "m"
"""


def test_no_config_or_spec_on_any_command_line(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    # /proc/PID/cmdline is what `ps` shows every local user.
    t = turnout_factory(SECRET_CONFIG)
    procs = [psutil.Process(t.proc.pid), *t.descendants()]
    assert len(procs) >= 3  # supervisor, gateway, worker
    for p in procs:
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        assert b"SECRET" not in cmdline, cmdline
        for leak in (b"pw-", b"base_url", b"runtime_dir", b"fake-alias-on-argv", b"{"):
            assert leak not in cmdline, (p.pid, cmdline)
    if os.geteuid() == 0:  # and indeed another user reads it
        seen = subprocess.run(other_user("cat", f"/proc/{procs[1].pid}/cmdline"), capture_output=True)
        assert seen.returncode == 0 and b"gateway.main" in seen.stdout


# --------------------------------------------- item 10: registering as a worker


class Rogue:
    """A process of the same user that speaks the worker protocol to the gateway
    without being one of turnout's workers: connects to the gateway's ipc sockets,
    says Hello and Ready for model ``fake``, and collects what it is sent."""

    def __init__(self, t: TurnoutProcess) -> None:
        import zmq

        from turnout.protocol.sockets import Endpoints

        self.zmq = zmq
        self.ctx = zmq.Context()
        try:
            self._connect(t, Endpoints)
        except BaseException:
            # a context with open sockets blocks for ever when collected later
            self.close()
            raise

    def _connect(self, t: TurnoutProcess, Endpoints: Any) -> None:
        zmq = self.zmq
        ep = Endpoints(str(t.runtime_dir))
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.IDENTITY, b"rogue-0")
        self.dealer.setsockopt(zmq.LINGER, 0)
        # A refused handshake leaves the DEALER with no peer, and a send with no peer
        # blocks for ever (this hung a CI run): sends give up after 2 s instead.
        self.dealer.setsockopt(zmq.SNDTIMEO, 2000)
        self.dealer.connect(ep.gateway_requests("gw0"))
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.xpub.connect(ep.gateway_streams("gw0"))
        self.enc = msgspec.msgpack.Encoder()
        self._send(m.Hello(role="worker", id="rogue-0", pid=os.getpid(), backend="fake", models=["fake"],
                           max_concurrency=64))
        self.subscribed = bool(self.xpub.poll(3000))  # the gateway's SUB subscribes to the stream topic
        self._send(m.Ready(id="rogue-0", context_window=4096))

    def _send(self, msg: m.Hello | m.Ready) -> None:
        try:
            self.dealer.send(self.enc.encode(msg))
        except self.zmq.Again:
            pass  # no peer took it: the gateway refused the connection

    def received(self, timeout_s: float) -> list[bytes]:
        out = []
        while self.dealer.poll(int(timeout_s * 1000)):
            out.append(self.dealer.recv())
            timeout_s = 0.2
        return out

    def close(self) -> None:
        self.ctx.destroy(linger=0)  # every socket it made, then the context


def _healthz_ready(t: TurnoutProcess) -> int:
    return int(t.healthz()[1]["workers_ready"])  # type: ignore[call-overload]


def test_a_process_that_is_not_a_worker_cannot_register_and_receive_prompts(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(CONFIG)
    rogue = Rogue(t)
    try:
        # Without turnout's own worker, the only one left to route to is the rogue.
        command(t, m.EvictModel("fake"))
        poll_until(lambda: not status(t).workers, 20)
        got: list[bytes] = []

        def ask() -> None:
            c = anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0, timeout=15)
            with contextlib.suppress(anthropic.APIError):
                c.messages.create(model="fake", max_tokens=4,
                                  messages=[{"role": "user", "content": "the launch codes are 1234"}])

        th = threading.Thread(target=ask)
        th.start()
        got = rogue.received(5.0)
        th.join(20)
        assert not [g for g in got if b"launch codes" in g], "a process that is not turnout's worker got the prompt"
        assert not rogue.subscribed, "the gateway's stream socket accepted a process without the instance's secret"
    finally:
        rogue.close()


def test_a_registration_that_leaves_is_not_counted_in_healthz(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(CONFIG)
    poll_until(lambda: _healthz_ready(t) == 1, 20)
    rogue = Rogue(t)
    time.sleep(0.5)  # let it register, if it can
    rogue.close()
    # Gone (or never there): counted neither while there nor after leaving.
    poll_until(lambda: _healthz_ready(t) == 1, 5)
    assert [_healthz_ready(t) for _ in range(5)] == [1] * 5
