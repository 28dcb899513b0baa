"""The bench report without matplotlib (it comes with the dev extra only): the JSON
and Markdown are written, the plots are skipped and the user is told why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from turnout.bench import report

DOC = {"command": "turnout bench", "date": "2026-12-02 00:00 UTC", "machine": "x86_64", "runs": 1,
       "sizes": {}, "targets": [{"name": "a", "kind": "local", "context_window": 32768}],
       "results": {"a": {"single_2k": {"ttft_s": {"p50": 0.1, "p95": 0.2}}}}}


def test_without_matplotlib_the_report_is_written_and_the_plots_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    files = report.write(DOC, tmp_path)
    assert files == [tmp_path / "bench.json", tmp_path / "bench.md"]
    assert "| a (local) | 0.10 | 0.20 |" in (tmp_path / "bench.md").read_text()
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_with_matplotlib_the_plots_are_made(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    files = report.write(DOC, tmp_path)
    assert [f for f in files if f.suffix == ".png"] and all(f.exists() for f in files)
