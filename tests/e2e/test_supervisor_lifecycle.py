"""Crash loops parked and un-parked, load on demand (with pings while the model
loads), idle unload after the keep-alive; real processes."""

from __future__ import annotations

import aiohttp
import anthropic
import pytest
import urllib3

from tests.helpers import poll_until
from tests.supervisor.helpers import command, expected_text, status, stream, workers_of
from turnout.protocol import messages as m

CRASHY = """
[server]
worker_wait_s = 10.0
heartbeat_timeout_s = 5.0

[supervisor]
crash_loop_restarts = 3
healthy_after_s = 60

[[models]]
name = "fake"
backend = "fake"
[models.options]
reply_tokens = 4
"""


def _ask(t, text: str) -> anthropic.types.Message:  # type: ignore[no-untyped-def]
    c = anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)
    return c.messages.create(model="fake", max_tokens=10, messages=[{"role": "user", "content": text}])


def test_crash_loop_is_parked_with_its_reason_then_load_unparks(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(CRASHY)
    for i in range(3):
        poll_until(lambda: workers_of(t, "fake", "ready"), 20)
        with pytest.raises(anthropic.APIStatusError):
            _ask(t, f"boom{i} [[crash:0]]")
    w = poll_until(lambda: workers_of(t, "fake", "failed"), 20)[0]
    assert w.reason.startswith("crash loop: 3 crashes in a row") and w.pid == 0
    # the same reason in the gateway's /admin/workers
    admin = t.admin_workers()
    assert admin[0]["state"] == "failed" and str(admin[0]["reason"]).startswith("crash loop")
    # it stays parked: no restart, and a request says why (503, not a hang)
    r = urllib3.request("POST", t.base_url + "/v1/messages", json={
        "model": "fake", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": t.token})
    assert r.status == 503 and "parked" in r.json()["error"]["message"], r.data
    assert workers_of(t, "fake")[0].state == "failed"
    # `turnout load` un-parks it
    reply = command(t, m.LoadModel("fake", unpark=True))
    assert isinstance(reply, m.Ack), reply
    poll_until(lambda: workers_of(t, "fake", "ready"), 20)
    assert _ask(t, "alive again").content[0].text == "alive again alive again"  # type: ignore[union-attr]


LAZY = """
[server]
worker_wait_s = 1.0

[supervisor]
ping_interval_s = 0.3

[[models]]
name = "fake"
backend = "fake"
[models.options]
reply_tokens = 4

[[models]]
name = "lazy"
backend = "fake"
workers = 0
on_demand = true
keep_alive_s = 2.0
[models.options]
load_delay_s = 1.5
"""


async def test_load_on_demand_pings_while_loading_then_idle_unload(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(LAZY)
    assert not workers_of(t, "lazy")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        res = await stream(session, t, "wake up lazy", 6, model="lazy")
        assert res.status == 200 and res.stopped and res.text == expected_text("wake up lazy", 6), res
        # pings kept the client's connection alive while the model loaded (1.5 s)
        first_delta = res.events.index("content_block_delta")
        assert "ping" in res.events[:first_delta], res.events
        # idle for longer than its keep-alive: unloaded, with the reason shown
        poll_until(lambda: not workers_of(t, "lazy"), 15)
        lazy = next(mi for mi in status(t).models if mi.name == "lazy")
        assert lazy.running == 0 and lazy.reason == "unloaded: idle for 2 s"
        assert workers_of(t, "fake", "ready")  # the model without a keep-alive stays
        # and it loads again on the next request
        again = await stream(session, t, "once more", 3, model="lazy")
        assert again.status == 200 and again.text == expected_text("once more", 3)


def test_models_with_workers_zero_are_not_loaded_on_demand_by_default(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    cfg = LAZY.replace("on_demand = true\n", "")
    t = turnout_factory(cfg)
    r = urllib3.request("POST", t.base_url + "/v1/messages", json={
        "model": "lazy", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": t.token})
    assert r.status == 529 and not workers_of(t, "lazy")
    # `turnout load` loads it
    assert isinstance(command(t, m.LoadModel("lazy")), m.Ack)
    poll_until(lambda: workers_of(t, "lazy", "ready"), 20)


def test_evict_drains_and_stops_a_model(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(LAZY)
    reply = command(t, m.EvictModel("fake"))
    assert isinstance(reply, m.Ack) and "1 worker" in reply.message
    poll_until(lambda: not workers_of(t, "fake"), 15)
    fake = next(mi for mi in status(t).models if mi.name == "fake")
    assert fake.desired == 0 and fake.reason == "evicted by request"
    # a model that starts with workers loads on demand after an eviction
    assert _ask(t, "back on demand").content[0].text == "back on demand back"  # type: ignore[union-attr]
