"""Statistics shared by every benchmark: nearest-rank percentiles and summaries."""

from __future__ import annotations

import math
import statistics


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``p`` percent of
    the samples at or below it. Raises ValueError on no samples."""
    if not xs:
        raise ValueError("no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    s = sorted(xs)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return s[rank - 1]


def summary(xs: list[float], digits: int = 4) -> dict[str, float]:
    """n, p50, p95, p99 and mean of ``xs`` (empty: just n = 0)."""
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": round(pct(xs, 50), digits), "p95": round(pct(xs, 95), digits),
            "p99": round(pct(xs, 99), digits), "mean": round(statistics.fmean(xs), digits)}
