"""The ``turnout ps`` table and where an instance keeps its files: no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.protocol import messages as m
from turnout.supervisor import control
from turnout.supervisor.daemon import format_status

MB = 1024 * 1024


def test_status_table_has_every_column_and_the_reasons() -> None:
    st = m.StatusReply(
        workers=[
            m.WorkerInfo(id="fake-0", backend="fake", model="fake", pid=123, state="ready", rss_bytes=300 * MB,
                         in_flight=2, restarts=1, uptime_s=3700.0),
            m.WorkerInfo(id="bad-0", backend="fake", model="bad", pid=0, state="failed", rss_bytes=0, in_flight=0,
                         restarts=8, uptime_s=0.0, reason="crash loop: 8 crashes in a row (exited with code 70)"),
        ],
        models=[m.ModelInfo(name="lazy", backend="fake", desired=0, running=0, reason="unloaded: idle for 300 s")],
        supervisor_pid=10, gateway_pid=11, available_bytes=20 * 1024 * MB, total_bytes=24 * 1024 * MB,
        pressure="soft", soft_available_bytes=2048 * MB, hard_available_bytes=1024 * MB, port=8765)
    out = format_status(st)
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("WORKER"))
    assert header.split() == ["WORKER", "BACKEND", "MODEL", "PID", "STATE", "RSS", "UPTIME", "RESTARTS",
                              "IN-FLIGHT", "REASON"]
    row = next(line for line in lines if line.startswith("fake-0")).split()
    assert row == ["fake-0", "fake", "fake", "123", "ready", "300M", "62m", "1", "2"]
    bad = next(line for line in lines if line.startswith("bad-0"))
    assert "failed" in bad and bad.endswith("crash loop: 8 crashes in a row (exited with code 70)")
    assert "pressure soft" in out and "20.0G available of 24.0G" in out
    assert "not running: lazy (unloaded: idle for 300 s)" in out


def test_state_files_follow_xdg_state_home_and_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert control.pidfile_path(9000) == tmp_path / "turnout" / "9000" / "turnout.pid"
    assert control.logfile_path(9001) == tmp_path / "turnout" / "9001" / "turnout.log"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert control.state_dir() == tmp_path / "h" / ".local" / "state" / "turnout"


def test_runtime_dir_defaults_like_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TURNOUT_RUNTIME_DIR", str(tmp_path))
    assert control.runtime_dir_for(8765) == tmp_path / "8765"
    assert control.runtime_dir_for(8765, "/x/y") == Path("/x/y")


def test_client_without_a_socket_raises_not_running(tmp_path: Path) -> None:
    with control.ControlClient(tmp_path / "nothing") as c, pytest.raises(control.NotRunning):
        c.request(m.Status())
