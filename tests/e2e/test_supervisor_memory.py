"""Memory pressure with real processes: the fake backend grows its memory until the
supervisor evicts it, before the machine is short. The watermarks are set relative
to what is available when the test starts, so it behaves the same on any machine."""

from __future__ import annotations

import time

import aiohttp
import psutil
import urllib3

from tests.helpers import poll_until
from tests.supervisor.helpers import command, expected_text, log_events, status, stream, workers_of
from turnout.protocol import messages as m

MB = 1024 * 1024


def config(soft_mb: float, hard_mb: float) -> str:
    return f"""
[server]
worker_wait_s = 5.0
heartbeat_timeout_s = 5.0

[supervisor]
soft_available_mb = {soft_mb:.0f}
hard_available_mb = {hard_mb:.0f}
hysteresis_mb = 100
cooldown_s = 0.5
sample_interval_s = 0.2
hard_drain_s = 1.0
retry_after_s = 7

[[models]]
name = "idle-lo"
backend = "fake"
priority = 0

[[models]]
name = "hog"
backend = "fake"
priority = 5
[models.options]
token_delay_ms = 10
"""


async def test_growing_worker_is_evicted_before_the_machine_is_short(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    avail_mb = psutil.virtual_memory().available / MB
    # Pressure clears when memory is back within (1000 - hysteresis) MiB of the start:
    # room for the rest of a shared machine to move meanwhile.
    soft, hard = avail_mb - 1000, avail_mb - 1800
    t = turnout_factory(config(soft, hard))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        # 8 MiB per token, 100 tokens a second: it would take all memory in under a minute
        res = await stream(session, t, "eat memory [[grow:8]]", 6000, model="hog")
    # the stream ended with a clean error, not a hang or a cut connection
    assert res.status == 200 and res.error == "overloaded_error" and not res.stopped, res
    assert res.text and expected_text("eat memory", len(res.text.split())).startswith(res.text)
    ev = log_events(t, "memory_evict")
    # soft pressure took the idle, lower-priority model first; hard pressure the hog
    assert [e["id"] for e in ev][:2] == ["idle-lo-0", "hog-0"], ev
    assert ev[0]["pressure"] == "soft" and not ev[0]["drain"]
    assert ev[1]["pressure"] == "hard" and ev[1]["drain"]
    # ...well before the machine was short: the hog held about (avail - hard), no more
    assert ev[1]["available_mb"] > hard - 800, (ev[1], hard)
    assert ev[1]["rss_mb"] < 1800 + 800
    st = status(t)
    reasons = {mi.name: mi.reason for mi in st.models}
    assert "memory pressure (soft)" in reasons["idle-lo"] and "memory pressure (hard)" in reasons["hog"]
    poll_until(lambda: not workers_of(t, "hog") and not workers_of(t, "idle-lo"), 15)
    # the memory came back, the pressure cleared, and the hog loads again on demand
    poll_until(lambda: status(t).pressure == "none", 15)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        again = await stream(session, t, "small again", 5, model="hog")
    assert again.status == 200 and again.text == expected_text("small again", 5), again


def test_load_refused_when_it_does_not_fit_is_529_with_retry_after(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    cfg = config(1024, 512) + """
[[models]]
name = "huge"
backend = "fake"
workers = 0
on_demand = true
expected_mb = 100000000
"""
    t = turnout_factory(cfg)
    r = urllib3.request("POST", t.base_url + "/v1/messages", json={
        "model": "huge", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": t.token})
    assert r.status == 529, r.data
    assert r.headers["Retry-After"] == "7"
    body = r.json()
    assert body["error"]["type"] == "overloaded_error" and "not enough memory" in body["error"]["message"]
    reply = command(t, m.LoadModel("huge"))
    assert isinstance(reply, m.LoadRefused) and reply.retry_after_s == 7
    assert not workers_of(t, "huge")


def test_a_crashed_worker_comes_back_only_when_it_fits(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    """A restart goes through admission: while something else holds the memory the
    model needs, the crashed worker waits (its reason says why) instead of being
    started into the shortage; once the memory is back, it restarts by itself."""
    import numpy as np

    avail_mb = psutil.virtual_memory().available / MB
    soft = avail_mb - 2500  # at start: 1000 MiB to spare for the model's 1500
    t = turnout_factory(f"""
[supervisor]
soft_available_mb = {soft:.0f}
hard_available_mb = {soft - 1000:.0f}
hysteresis_mb = 100
sample_interval_s = 0.2
retry_after_s = 0.5
restart_first_s = 0.05

[[models]]
name = "fits"
backend = "fake"
expected_mb = 1500
""")
    poll_until(lambda: workers_of(t, "fits", "ready"), 30)
    hog = np.ones(2000 * MB, dtype=np.uint8)  # now the model would leave ~1000 MiB too little
    try:
        r = urllib3.request("POST", t.base_url + "/v1/messages", headers={"x-api-key": t.token}, json={
            "model": "fits", "max_tokens": 5, "messages": [{"role": "user", "content": "x [[crash:0]]"}]})
        assert r.status in (200, 529), r.data  # the worker died on this request
        waiting = poll_until(lambda: [w for w in status(t).workers if "restart waits for memory" in w.reason], 15)
        assert waiting[0].id == "fits-0" and "not enough memory" in waiting[0].reason, waiting
        time.sleep(1.5)  # three retries' worth: still not started into the shortage
        assert not workers_of(t, "fits", "ready")
    finally:
        del hog
    # the memory is back: the next retry admits it
    poll_until(lambda: workers_of(t, "fits", "ready"), 30)
    assert log_events(t, "restart_deferred")[0]["id"] == "fits-0"
