"""Crashes, hangs, cancellation and shutdown, with real processes."""

from __future__ import annotations

import os
import signal
import socket

import anthropic
import pytest
import urllib3

from tests.conftest import FAKE_CONFIG, SLOW_CONFIG
from tests.helpers import cancel_mid_stream, poll_until
from turnout.supervisor.launch import TurnoutProcess


def client(t: TurnoutProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)


def ask(t: TurnoutProcess, text: str = "hello again", n: int = 3) -> str:
    msg = client(t).messages.create(model="fake", max_tokens=n, messages=[{"role": "user", "content": text}])
    return msg.content[0].text  # type: ignore[union-attr]


def test_worker_crash_mid_stream_is_a_clean_error_then_recovers(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory()
    pid_before = t.worker_pids()["fake-0"]
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        with client(t).messages.stream(model="fake", max_tokens=50,
                                       messages=[{"role": "user", "content": "tick tock [[crash:5]]"}]) as s:
            for text in s.text_stream:
                got.append(text)
    assert ei.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    # What arrived before the crash is in order and uncorrupted (tokens still queued
    # inside the dying process may be lost with it).
    assert "tick tock tick tock tick".startswith("".join(got))
    # The gateway survived, and the next request succeeds once the worker is back.
    assert poll_until(lambda: _try(t), timeout=15) == "hello again hello"
    assert t.worker_pids()["fake-0"] != pid_before
    w = t.admin_workers()[0]
    assert w["restarts"] == 1 and w["state"] == "ready"


def _try(t: TurnoutProcess) -> str | None:
    try:
        return ask(t)
    except anthropic.APIError:  # status errors and refused connections alike
        return None


def test_worker_crash_non_streaming_is_529(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory()
    with pytest.raises(anthropic.APIStatusError) as ei:
        ask(t, "boom [[crash:2]]", n=10)
    assert ei.value.status_code == 529
    assert ei.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert poll_until(lambda: _try(t), timeout=15)


def test_sigkill_mid_stream(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    """A worker killed from outside (OOM killer, say) costs that stream an error;
    another model's worker and the gateway carry on."""
    t = turnout_factory(SLOW_CONFIG)
    pid = t.worker_pids()["fake-0"]
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        with client(t).messages.stream(model="fake", max_tokens=500,
                                       messages=[{"role": "user", "content": "slow words"}]) as s:
            for text in s.text_stream:
                got.append(text)
                if len(got) == 3:
                    os.kill(pid, signal.SIGKILL)
    assert ei.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert 3 <= len(got) < 500
    assert poll_until(lambda: _try(t), timeout=15)


def test_hung_worker_is_replaced(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory()
    pid = t.worker_pids()["fake-0"]
    with pytest.raises(anthropic.APIStatusError) as ei:
        ask(t, "freeze [[hang:2]]", n=10)
    assert ei.value.status_code == 529
    assert poll_until(lambda: _try(t), timeout=20)
    assert t.worker_pids()["fake-0"] != pid
    assert any(e.get("event") == "worker_hung" for e in t.log_events())


def test_client_disconnect_cancels_generation(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(SLOW_CONFIG)
    cancel_mid_stream(t.port, t.token)
    ev = poll_until(lambda: [e for e in t.log_events() if e.get("event") == "request_cancelled"], timeout=5)[0]
    assert ev["cancel_ms"] >= 0
    # The worker is free again: nothing in flight, and it answers the next request.
    assert poll_until(lambda: t.admin_workers()[0]["in_flight"] == 0, timeout=5)
    assert ask(t, "next one") == "next one next"


def test_no_worker_available_is_529_with_retry_after(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    cfg = FAKE_CONFIG.replace("worker_wait_s = 10.0", "worker_wait_s = 0.3") + """
[[models]]
name = "idle"
backend = "fake"
workers = 0
"""
    t = turnout_factory(cfg)
    r = urllib3.request("POST", t.base_url + "/v1/messages", json={
        "model": "idle", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": t.token})
    assert r.status == 529
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["type"] == "overloaded_error"


def test_model_that_fails_to_load_is_parked(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    cfg = FAKE_CONFIG + """
[[models]]
name = "broken"
backend = "fake"
[models.options]
fail_load = true
"""
    t = turnout_factory(cfg, wait=False)
    w = poll_until(lambda: [w for w in _workers(t) if w["id"] == "broken-0" and w["state"] == "failed"], timeout=20)[0]
    assert "failed to load" in str(w["reason"])
    poll_until(lambda: t.healthz()[1].get("workers_ready") == 1, timeout=20)
    status, body = t.healthz()
    assert status == 503 and body["workers_expected"] == 2  # not healthy: a model is down


def _workers(t: TurnoutProcess) -> list[dict[str, object]]:
    try:
        return t.admin_workers()
    except OSError:
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_leaves_nothing_behind(turnout_factory, sig: int) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory()
    kids = t.descendants()
    assert len(kids) >= 2  # the gateway and a worker
    assert t.proc is not None
    t.proc.send_signal(sig)
    assert t.proc.wait(20) == 0
    for k in kids:
        assert not k.is_running() or k.status() == "zombie"
    assert not t.runtime_dir.exists() or not list(t.runtime_dir.iterdir())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", t.port), timeout=1).close()


def test_gateway_crash_is_restarted(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory()
    gw = next(k for k in t.descendants() if "turnout.gateway.main" in " ".join(k.cmdline()))
    gw.kill()
    gw.wait(5)
    assert poll_until(lambda: _try(t), timeout=20) == "hello again hello"
