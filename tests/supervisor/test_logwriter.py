"""The daemon's log writer (supervisor/logwriter.py): real processes writing into
its pipe; every line of the file a JSON object, a traceback one record, 0600,
rotated at the cap."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from turnout.supervisor.logwriter import Pump, wrap_raw

CRASHER = """
import sys
print('{"event": "spawned", "level": "info"}', file=sys.stderr, flush=True)
print("llama_model_loader: loaded meta data with 24 key-value pairs", file=sys.stderr, flush=True)
def f():
    raise ValueError("boom")
f()
"""


def _records(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        assert isinstance(rec, dict), line
        out.append(rec)
    return out


def _writer(path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    w = subprocess.Popen([sys.executable, "-m", "turnout.supervisor.logwriter", str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
    assert w.stdout is not None and w.stdout.readline() == b"ok\n"
    return w


def test_a_crashing_process_behind_the_writer_leaves_only_json_lines(tmp_path: Path) -> None:
    log = tmp_path / "state" / "turnout.log"
    log.parent.mkdir(mode=0o700)
    w = _writer(log)
    assert w.stdin is not None
    crash = subprocess.run([sys.executable, "-c", CRASHER], stderr=w.stdin)
    assert crash.returncode == 1
    w.stdin.close()
    assert w.wait(10) == 0
    recs = _records(log)
    assert recs[0] == {"event": "spawned", "level": "info"}  # JSON lines pass as they are
    assert recs[1]["event"] == "output" and "llama_model_loader" in str(recs[1]["text"])
    tb = [r for r in recs if r["event"] == "crash_output"]
    assert len(tb) == 1 and tb[0]["level"] == "error"
    text = str(tb[0]["text"])
    assert text.startswith("Traceback (most recent call last):") and text.endswith("ValueError: boom")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_the_log_rotates_at_the_cap_and_keeps_the_backups_private(tmp_path: Path) -> None:
    log = tmp_path / "turnout.log"
    log.write_text('{"event": "old"}\n')
    os.chmod(log, 0o644)  # an older turnout's
    w = _writer(log, {"TURNOUT_LOG_MAX_BYTES": "2048", "TURNOUT_LOG_BACKUPS": "2"})
    assert w.stdin is not None
    line = json.dumps({"event": "http", "pad": "x" * 90}).encode() + b"\n"
    w.stdin.write(line * 200)  # ~20 KB: rotates many times
    w.stdin.close()
    assert w.wait(10) == 0
    files = sorted(tmp_path.glob("turnout.log*"))
    assert [f.name for f in files] == ["turnout.log", "turnout.log.1", "turnout.log.2"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600 and f.stat().st_size <= 2048, f
        assert all(r["event"] == "http" for r in _records(f))


def test_a_burst_of_raw_lines_is_one_record_and_a_pause_ends_it() -> None:
    p = Pump()
    assert p.feed(b"Fatal Python error: Segmentation fault\n\nThread 0x1 (most recent call first):\n", 0.0) == []
    assert p.feed(b'  File "x.py", line 3 in f\n', 0.05) == []
    assert p.tick(0.1) == []  # still within the burst
    [rec] = p.tick(0.5)
    r = json.loads(rec)
    assert r["event"] == "crash_output" and r["level"] == "error"
    assert r["text"] == ('Fatal Python error: Segmentation fault\n\nThread 0x1 (most recent call first):\n'
                         '  File "x.py", line 3 in f')


def test_a_json_line_ends_a_burst_and_an_unterminated_line_is_not_lost() -> None:
    p = Pump()
    out = p.feed(b'raw one\n{"event": "x"}\n{"event": "y", "trunc', 0.0)
    assert [json.loads(o)["event"] for o in out] == ["output", "x"]
    assert p.tick(0.5) == []
    [rec] = p.tick(1.5)  # the unterminated line, after waiting for the rest of it
    assert json.loads(rec)["text"] == '{"event": "y", "trunc'
    assert p.finish() == []


def test_huge_raw_output_is_capped() -> None:
    r = json.loads(wrap_raw(["y" * 100_000]))
    assert len(r["text"]) == 64 * 1024 and r["truncated_chars"] == 100_000 - 64 * 1024
