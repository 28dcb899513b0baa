"""`turnout up` refuses a config it cannot serve, before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("text", "needle"), [
    ('[[endpoints]]\nname = "x"\nprovider = "azure"\n', "endpoints.x.provider: 'azure' is not one of"),
    ('[[models]]\nname = "m"\nbackend = "fake"\nworkers = -1\n', "workers must be >= 0"),
    ("[server]\nport = 'eighty'\n", "port"),
])
def test_bad_config_exits_2_with_the_reason(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = subprocess.run([sys.executable, "-m", "turnout.cli", "up", "--config", str(cfg), "--port", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr
