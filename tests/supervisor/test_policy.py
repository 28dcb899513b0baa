"""Restart backoff, crash-loop parking, idle expiry, drains and scale-down order:
pure functions, no processes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from turnout.supervisor import policy
from turnout.supervisor.policy import BackoffPolicy, DrainView, SlotView

P = BackoffPolicy(first_s=0.05, base_s=0.5, factor=2.0, max_s=30.0, jitter=0.2, healthy_s=30.0, park_after=4)


def test_first_restart_is_almost_immediate() -> None:
    assert policy.restart_delay(P, 1, rand=0.9) == 0.05


def test_backoff_grows_exponentially_up_to_the_ceiling() -> None:
    delays = [policy.restart_delay(P, n, rand=0.0) for n in range(2, 10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == 30.0
    assert all(a <= b for a, b in itertools.pairwise(delays))


def test_jitter_adds_at_most_its_fraction() -> None:
    assert policy.restart_delay(P, 3, rand=0.0) == 1.0
    assert policy.restart_delay(P, 3, rand=0.999) == pytest.approx(1.2, abs=1e-3)
    # without a given rand, it stays within the band
    for _ in range(50):
        assert 1.0 <= policy.restart_delay(P, 3) <= 1.2


def test_crash_count_resets_after_healthy_running() -> None:
    assert policy.next_crash_count(P, 3, ran_for_s=1.0) == 4
    assert policy.next_crash_count(P, 3, ran_for_s=30.0) == 1


def test_crash_loop_is_parked() -> None:
    assert policy.should_park(P, 3, 70, 3) == ""
    assert "crash loop" in policy.should_park(P, 4, 70, 3)


def test_model_load_error_is_parked_at_once() -> None:
    assert policy.should_park(P, 1, 3, 3) == "model failed to load"


def test_backoff_from_config() -> None:
    b = policy.backoff_from_config(0.1, 1.0, 10.0, 5.0, 0)
    assert (b.first_s, b.base_s, b.max_s, b.healthy_s, b.park_after) == (0.1, 1.0, 10.0, 5.0, 1)


def test_heartbeat_stale() -> None:
    assert not policy.heartbeat_stale(10_000_000_000, 8_000_000_000, 3.0)
    assert policy.heartbeat_stale(12_000_000_000, 8_000_000_000, 3.0)


@pytest.mark.parametrize(("now", "in_flight", "state", "keep", "expired"), [
    (100.0, 0, "ready", 60.0, True),
    (100.0, 0, "ready", 0.0, False),  # 0: keep forever
    (50.0, 0, "ready", 60.0, False),  # not idle long enough
    (100.0, 1, "ready", 60.0, False),  # busy
    (100.0, 0, "loading", 60.0, False),
])
def test_idle_expired(now: float, in_flight: int, state: str, keep: float, expired: bool) -> None:
    assert policy.idle_expired(now, 0.0, keep, in_flight, state) is expired


def _drain(**kw: object) -> DrainView:
    base: dict[str, Any] = dict(acked=False, gateway_in_flight=0, worker_in_flight=0, gateway_up=True, started=0.0, timeout_s=10.0)
    base.update(kw)
    return DrainView(**base)  # type: ignore[arg-type]


def test_drain_waits_for_the_gateway_to_stop_routing() -> None:
    assert policy.drain_finished(_drain(acked=False), 1.0) == ""


def test_drain_waits_for_in_flight_requests() -> None:
    assert policy.drain_finished(_drain(acked=True, gateway_in_flight=2), 1.0) == ""
    assert policy.drain_finished(_drain(acked=True, gateway_in_flight=0), 1.0) == "drained"


def test_drain_is_bounded() -> None:
    assert policy.drain_finished(_drain(acked=True, gateway_in_flight=5), 10.0) == "drain timed out"


def test_drain_without_a_gateway_uses_the_heartbeat() -> None:
    assert policy.drain_finished(_drain(gateway_up=False, worker_in_flight=1), 1.0) == ""
    assert policy.drain_finished(_drain(gateway_up=False, worker_in_flight=0), 1.0) == "drained"


def test_scale_down_prefers_unready_then_idle_then_newest() -> None:
    slots = [
        SlotView("a", "ready", 3, started=1.0),
        SlotView("b", "ready", 0, started=2.0),
        SlotView("c", "ready", 0, started=3.0),
        SlotView("d", "loading", 0, started=0.5),
        SlotView("e", "failed", 0, started=0.1),
    ]
    assert policy.scale_down_order(slots, 3) == ["e", "d", "c"]
    assert policy.scale_down_order(slots, 5)[-1] == "a"  # the busiest goes last
    assert policy.scale_down_order(slots, 0) == []
