"""``turnout up --daemon`` and the commands that drive a running turnout.

Daemon mode re-executes ``turnout up`` as a detached child (a new session, stdin
from /dev/null, stdout and stderr into a pipe read by the log writer,
supervisor/logwriter.py: one JSON record per line whatever wrote it, 0600 in a 0700
directory, rotated) instead of forking the CLI process: the supervisor must start
from a clean interpreter, as its own children do (never fork). The parent waits
until the new supervisor answers on its control socket with its gateway up, prints
where things are, and exits.

The other commands (down, status/ps, scale, load, evict) each send one typed command
through :class:`supervisor.control.ControlClient`; ``logs`` reads the daemon's log
file. A supervisor that is not running gives one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import psutil

from turnout.protocol import messages as m
from turnout.protocol.config import DEFAULT_PORT, ConfigError, load_config
from turnout.protocol.paths import UnsafePathError
from turnout.protocol.sockets import ensure_runtime_dir
from turnout.supervisor.control import (
    ControlClient,
    NoAnswer,
    NotRunning,
    Untrusted,
    ensure_instance_state_dir,
    logfile_path,
    pidfile_path,
    runtime_base_for,
    runtime_dir_for,
    verify_supervisor,
)

MB = 1024 * 1024


def _fail(msg: str, code: int = 1) -> int:
    print(f"turnout: {msg}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- up -d


def start_daemon(args: argparse.Namespace, host: str, port: int) -> int:
    """Start ``turnout up`` detached; return once it serves (or failed to)."""
    runtime = runtime_dir_for(port, args.runtime_dir)
    try:
        with ControlClient(runtime, timeout_s=1.0) as c:
            st = c.request(m.Status())
        if isinstance(st, m.StatusReply):
            return _fail(f"turnout is already running on port {port} (pid {st.supervisor_pid})")
    except Untrusted as e:
        return _fail(str(e))
    except NotRunning:
        pass
    pidfile, logfile = pidfile_path(port), logfile_path(port)
    try:
        # Here, not only in the child: an unsafe directory is said on this terminal.
        ensure_runtime_dir(runtime, runtime_base_for(args.runtime_dir))
        ensure_instance_state_dir(port)
    except (UnsafePathError, ValueError) as e:
        return _fail(str(e), 2)
    cmd = [sys.executable, "-m", "turnout.cli", "up", "--port", str(port), "--host", host,
           "--pidfile", str(pidfile)]
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    if args.runtime_dir:
        cmd += ["--runtime-dir", str(Path(args.runtime_dir).resolve())]
    r, w = os.pipe()
    try:
        writer = subprocess.Popen([sys.executable, "-m", "turnout.supervisor.logwriter", str(logfile)], stdin=r,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                                  close_fds=True, cwd="/")
        assert writer.stdout is not None
        said = writer.stdout.readline().decode(errors="replace").strip()
        writer.stdout.close()
        if said != "ok":
            writer.wait()
            return _fail(said or f"the log writer exited with code {writer.returncode}", 2)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                                start_new_session=True, close_fds=True, cwd="/")
    finally:
        # The writer sees EOF once the supervisor and every child have closed theirs.
        os.close(r)
        os.close(w)
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return _fail(f"turnout exited with code {proc.returncode} while starting; see {logfile}")
        try:
            with ControlClient(runtime, timeout_s=0.5) as c:
                st = c.request(m.Status())
            if isinstance(st, m.StatusReply) and st.gateway_ready:
                print(f"turnout is up: http://{host}:{port} (pid {proc.pid}); log: {logfile}")
                return 0
        except NotRunning:
            pass
        time.sleep(0.1)
    return _fail(f"turnout (pid {proc.pid}) did not become ready in {args.wait_s:g} s; see {logfile}")


# ------------------------------------------------------------------- the commands


def _instance(args: argparse.Namespace, config_path: Callable[[str | None], str | None]) -> tuple[int, Path]:
    port = args.port
    if port is None:
        try:
            port = load_config(config_path(args.config)).server.port
        except ConfigError:
            port = DEFAULT_PORT
    return port, runtime_dir_for(port, args.runtime_dir)


def _not_running(port: int, e: NotRunning | None = None) -> int:
    if isinstance(e, Untrusted):
        return _fail(str(e))
    if isinstance(e, NoAnswer):
        return _fail(f"turnout on port {port} did not answer within {e.timeout_s:g} s (busy or hung: see `turnout logs`)")
    return _fail(f"not running on port {port} (start it with `turnout up --daemon`)")


def _request(args: argparse.Namespace, cmd: m.Command) -> tuple[int, m.FromSupervisor | NotRunning]:
    port, runtime = _instance(args, args.config_path)
    try:
        with ControlClient(runtime, timeout_s=args.timeout_s) as c:
            return port, c.request(cmd)
    except NotRunning as e:
        return port, e


def _answer(port: int, reply: m.FromSupervisor | NotRunning) -> int:
    if isinstance(reply, NotRunning):
        return _not_running(port, reply)
    if isinstance(reply, m.Ack):
        print(reply.message or "ok")
        return 0
    if isinstance(reply, m.LoadRefused):
        hint = f" (retry in {reply.retry_after_s:g} s)" if reply.retry_after_s else ""
        return _fail(reply.message + hint)
    if isinstance(reply, m.ErrorReply | m.Refused):
        return _fail(reply.message)
    return _fail(f"unexpected answer: {type(reply).__name__}")


def _fmt_bytes(n: int) -> str:
    if n <= 0:
        return "-"
    return f"{n / MB:.0f}M" if n < 10 * 1024 * MB else f"{n / 1024 / MB:.1f}G"


def _fmt_age(s: float) -> str:
    if s <= 0:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def format_status(st: m.StatusReply) -> str:
    """The ``turnout ps`` table (pure: tested without a supervisor)."""
    lines = [
        f"turnout on port {st.port}: supervisor pid {st.supervisor_pid}, gateway pid {st.gateway_pid or '-'}"
        f" ({st.gateway_restarts} restarts)",
        f"memory: {_fmt_bytes(st.available_bytes)} available of {_fmt_bytes(st.total_bytes)}; "
        f"pressure {st.pressure} (soft < {_fmt_bytes(st.soft_available_bytes)}, "
        f"hard < {_fmt_bytes(st.hard_available_bytes)})",
        "",
    ]
    head = ("WORKER", "BACKEND", "MODEL", "PID", "STATE", "RSS", "UPTIME", "RESTARTS", "IN-FLIGHT", "REASON")
    rows = [head]
    for w in st.workers:
        rows.append((w.id, w.backend, w.model, str(w.pid or "-"), w.state, _fmt_bytes(w.rss_bytes),
                     _fmt_age(w.uptime_s), str(w.restarts), str(w.in_flight), w.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + "  " + r[-1])
    idle = [mi for mi in st.models if mi.running == 0]
    if idle:
        lines.append("")
        lines.append("not running: " + "; ".join(
            f"{mi.name} ({mi.reason or 'workers = 0'})" for mi in idle))
    return "\n".join(line.rstrip() for line in lines)


def cmd_status(args: argparse.Namespace) -> int:
    port, reply = _request(args, m.Status())
    if not isinstance(reply, m.StatusReply):
        return _answer(port, reply)
    if args.json:
        print(json.dumps(msgspec.to_builtins(reply), indent=2))
    else:
        print(format_status(reply))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    return _answer(*_request(args, m.ScaleModel(args.target, args.workers)))


def cmd_evict(args: argparse.Namespace) -> int:
    return _answer(*_request(args, m.EvictModel(args.model)))


def cmd_load(args: argparse.Namespace) -> int:
    port, reply = _request(args, m.LoadModel(args.model, unpark=True))
    code = _answer(port, reply)
    if code or args.no_wait:
        return code
    # Wait for a ready worker of the model (or for it to fail).
    port, runtime = _instance(args, args.config_path)
    deadline = time.monotonic() + args.wait_s
    with ControlClient(runtime, timeout_s=args.timeout_s) as c:
        while time.monotonic() < deadline:
            try:
                st = c.request(m.Status())
            except NotRunning as e:
                return _not_running(port, e)
            assert isinstance(st, m.StatusReply)
            mine = [w for w in st.workers if args.model in (w.model, w.id)]
            if not mine:
                mc = [mi.name for mi in st.models if mi.name == args.model]
                if not mc:  # an alias: the table names the model
                    mine = st.workers
            if any(w.state == "ready" for w in mine if args.model in (w.model, w.id)):
                print(f"{args.model} is ready")
                return 0
            failed = [w for w in mine if w.state == "failed"]
            if failed:
                return _fail(f"{args.model} failed: {failed[0].reason}")
            time.sleep(0.1)
    return _fail(f"{args.model} is not ready after {args.wait_s:g} s (see `turnout ps`)")


def cmd_down(args: argparse.Namespace) -> int:
    port, runtime = _instance(args, args.config_path)
    try:
        with ControlClient(runtime, timeout_s=args.timeout_s) as c:
            st = c.request(m.Status())
            if not isinstance(st, m.StatusReply):
                return _fail(f"unexpected answer on {runtime / 'control'}: {type(st).__name__}")
            pid = st.supervisor_pid
            # Only a pid proven to be this instance's supervisor is ever signalled
            # (and asked to stop): the answer alone proves nothing.
            why = verify_supervisor(pid, runtime, c.peer_pid, port)
            if why:
                return _fail(f"{why}; not stopping or killing anything")
            try:
                # Taken now, verified: psutil remembers its start time, so a pid
                # reused later is never signalled.
                proc = psutil.Process(pid)
                kids = proc.children(recursive=True)
            except psutil.Error:
                proc, kids = None, []
            c.request(m.Shutdown())
    except NotRunning as e:
        return _not_running(port, e)
    if proc is None:
        print("turnout stopped")
        return 0
    if not _wait_gone(proc, args.wait_s):
        # The graceful ladder did not finish in time: kill what is left.
        for p in [proc, *kids]:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs([proc, *kids], timeout=5)
        return _fail(f"turnout (pid {pid}) did not stop within {args.wait_s:g} s: killed")
    psutil.wait_procs([k for k in kids if k.is_running()], timeout=5)
    print("turnout stopped")
    return 0


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """True once ``proc`` has exited (a zombie its parent has not reaped yet counts:
    a supervisor started by another program exits into one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def cmd_logs(args: argparse.Namespace) -> int:
    port, _ = _instance(args, args.config_path)
    path = logfile_path(port)
    if not path.exists():
        return _fail(f"no log at {path}: turnout writes one only with `up --daemon` "
                     "(under systemd: journalctl --user -u turnout)")
    f = open(path, "rb")
    try:
        lines = f.readlines()
        # Older lines from the rotated files (turnout.log.1 the newest) when asked for more.
        for old in sorted((p for p in path.parent.glob(path.name + ".*") if _suffix(p) > 0), key=_suffix):
            if 0 < args.lines <= len(lines):
                break
            lines = old.read_bytes().splitlines(keepends=True) + lines
        for line in lines[-args.lines:] if args.lines > 0 else lines:
            sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()
        if not args.follow:
            return 0
        try:
            while True:  # until Ctrl-C, as tail -f; across rotations
                chunk = f.readline()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                    continue
                try:
                    rotated_away = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    rotated_away = False
                if rotated_away:
                    f.close()
                    f = open(path, "rb")
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return 0
    finally:
        f.close()


def _suffix(p: Path) -> int:
    tail = p.name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0
