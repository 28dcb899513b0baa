"""Cache-aware routing through the real gateway, supervisor and three fake workers:
concurrent new sessions spread over the workers, each follow-up turn goes back to
its session's worker, and /admin/workers and the log say so."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3

THREE = """
[server]
worker_wait_s = 10.0

[[models]]
name = "fake"
backend = "fake"
workers = 3
[models.options]
token_delay_ms = 100
"""


def _ask(t: Any, session: str, turns: list[str]) -> None:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": x} for i, x in enumerate(turns)]
    body = {"model": "fake", "max_tokens": 4, "system": "You are a fake. " * 20, "messages": msgs,
            "metadata": {"user_id": json.dumps({"session_id": session})}}
    r = urllib3.request("POST", t.base_url + "/v1/messages", json=body, headers={"x-api-key": t.token}, timeout=30)
    assert r.status == 200, r.data


def _conversation(t: Any, session: str) -> None:
    turns = [f"first words of {session}"]
    for i in range(3):
        _ask(t, session, turns)
        turns += ["an answer", f"follow-up {i}"]


def test_sessions_spread_then_stay_on_their_worker(turnout_factory: Any) -> None:
    t = turnout_factory(THREE)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda s: _conversation(t, s), [f"s{i}" for i in range(6)]))
    workers = [w for w in t.admin_workers() if w["model"] == "fake"]
    assert len(workers) == 3
    routed = [w["routed"] for w in workers]
    assert sum(r.get("session", 0) for r in routed) == 12  # every follow-up turn (6 sessions x 2)
    assert all(sum(r.values()) == 6 for r in routed), routed  # two sessions each
    events = [e for e in t.log_events() if e.get("event") == "worker_routed"]
    assert len(events) == 18 and {e["reason"] for e in events} <= {"session", "prefix", "least_loaded", "balance"}


LEAST = THREE.replace("worker_wait_s = 10.0", 'worker_wait_s = 10.0\nworker_routing = "least_loaded"')


def test_least_loaded_routing_ignores_sessions(turnout_factory: Any) -> None:
    t = turnout_factory(LEAST)
    for s in ("a", "b"):
        _conversation(t, s)
    routed = [w["routed"] for w in t.admin_workers() if w["model"] == "fake"]
    assert sum(r.get("least_loaded", 0) for r in routed) == 6 and not any(r.get("session") for r in routed)
