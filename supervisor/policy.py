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


def backoff_from_config(first_s: float, base_s: float, max_s: float, healthy_s: float, park_after: int) -> BackoffPolicy:
    """The ``[supervisor]`` restart settings as a :class:`BackoffPolicy`."""
    return BackoffPolicy(first_s=first_s, base_s=base_s, max_s=max_s, healthy_s=healthy_s,
                         park_after=max(1, park_after))


def idle_expired(now: float, last_used: float, keep_alive_s: float, in_flight: int, state: str) -> bool:
    """A ready worker nobody has used for ``keep_alive_s`` (0: keep forever)."""
    return keep_alive_s > 0 and state == "ready" and in_flight == 0 and now - last_used >= keep_alive_s


@dataclass(frozen=True)
class DrainView:
    """What the arbiter knows of a draining worker.

    ``acked``: the gateway has reported, after the drain began, that it no longer
    routes to the worker; ``gateway_in_flight``: requests the gateway still holds
    there; ``worker_in_flight``: what the worker's own heartbeat says;
    ``gateway_up``: a gateway is running (else only the heartbeat can tell)."""

    acked: bool
    gateway_in_flight: int
    worker_in_flight: int
    gateway_up: bool
    started: float
    timeout_s: float


def drain_finished(v: DrainView, now: float) -> str:
    """"" while the drain must go on, else why the worker may now be stopped."""
    if now - v.started >= v.timeout_s:
        return "drain timed out"
    if v.gateway_up:
        if v.acked and v.gateway_in_flight == 0:
            return "drained"
        return ""
    return "drained" if v.worker_in_flight == 0 else ""


@dataclass(frozen=True)
class SlotView:
    id: str
    state: str
    in_flight: int
    started: float  # monotonic spawn time


def scale_down_order(slots: list[SlotView], n: int) -> list[str]:
    """The ``n`` workers to stop when scaling down: those not serving yet (starting,
    loading, parked) first, then the idle, then the least busy; the newest first
    among equals, so long-lived warm workers stay."""
    rank = {"failed": 0, "exited": 0, "starting": 1, "loading": 1, "ready": 2}
    order = sorted(slots, key=lambda s: (rank.get(s.state, 3), s.in_flight, -s.started))
    return [s.id for s in order[: max(0, n)]]
