"""Pure policy functions of the supervisor: no processes, no sockets, no clocks.

Each takes a snapshot of state and returns a decision, so it is unit-tested directly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential restart backoff with jitter.

    Options:
        base_s: delay before the second restart in a row (the first is immediate
            after ``first_s``, so a one-off crash costs almost nothing).
        factor: growth per consecutive crash.
        max_s: ceiling.
        jitter: fraction of the delay added at random (0..jitter), so workers that
            died together do not restart in lockstep.
        healthy_s: a worker that has run this long resets its crash count.
        park_after: consecutive crashes, each shorter than ``healthy_s``, after
            which the worker is parked as failed (a crash loop).
    """

    first_s: float = 0.05
    base_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.2
    healthy_s: float = 30.0
    park_after: int = 8


def restart_delay(policy: BackoffPolicy, consecutive_crashes: int, rand: float | None = None) -> float:
    """Delay before restarting a worker that has crashed ``consecutive_crashes``
    times in a row (1 for the first crash). ``rand`` in [0, 1) for tests."""
    if consecutive_crashes <= 1:
        return policy.first_s
    delay = min(policy.max_s, policy.base_s * policy.factor ** (consecutive_crashes - 2))
    r = random.random() if rand is None else rand
    return delay * (1.0 + policy.jitter * r)


def next_crash_count(policy: BackoffPolicy, previous: int, ran_for_s: float) -> int:
    """The consecutive-crash count after a crash of a worker that ran ``ran_for_s``."""
    return 1 if ran_for_s >= policy.healthy_s else previous + 1


def should_park(policy: BackoffPolicy, consecutive_crashes: int, exit_code: int | None, load_error_code: int) -> str:
    """Why a dead worker must not be restarted, or "" to restart it."""
    if exit_code == load_error_code:
        return "model failed to load"
    if consecutive_crashes >= policy.park_after:
        return f"crash loop: {consecutive_crashes} crashes in a row"
    return ""


def heartbeat_stale(now_ns: int, last_heartbeat_ns: int, timeout_s: float) -> bool:
    return now_ns - last_heartbeat_ns > timeout_s * 1e9
