"""Percentiles and summaries used by every benchmark."""

from __future__ import annotations

import pytest

from turnout.bench.stats import pct, summary


def test_nearest_rank() -> None:
    xs = [float(x) for x in range(1, 101)]  # 1..100
    assert pct(xs, 50) == 50 and pct(xs, 95) == 95 and pct(xs, 99) == 99 and pct(xs, 100) == 100
    assert pct(xs, 0) == 1
    assert pct([3.0, 1.0, 2.0], 50) == 2  # unsorted input
    assert pct([7.0], 99) == 7


def test_small_samples_round_up() -> None:
    assert pct([1.0, 2.0, 3.0, 4.0], 95) == 4  # ceil(3.8) = 4th
    assert pct([1.0, 2.0, 3.0, 4.0], 50) == 2


def test_errors() -> None:
    with pytest.raises(ValueError):
        pct([], 50)
    with pytest.raises(ValueError):
        pct([1.0], 101)


def test_summary() -> None:
    s = summary([1.0, 2.0, 3.0, 4.0])
    assert s == {"n": 4, "p50": 2.0, "p95": 4.0, "p99": 4.0, "mean": 2.5}
    assert summary([]) == {"n": 0}
