"""Several workers per model, scaled up and down at run time under load: the gateway
spreads requests, a worker being scaled down is drained first, no request is lost."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.helpers import poll_until
from tests.supervisor.helpers import command, expected_text, log_events, status, stream, workers_of
from turnout.protocol import messages as m

CONFIG = """
[server]
worker_wait_s = 10.0
heartbeat_timeout_s = 5.0

[supervisor]
drain_timeout_s = 20.0

[[models]]
name = "fake"
backend = "fake"
workers = 1
[models.options]
token_delay_ms = 10
"""


async def test_scale_up_and_down_under_load_loses_no_request(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(CONFIG)
    results: list[tuple[str, int, object]] = []
    stop = asyncio.Event()
    busy_workers: set[str] = set()

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while not stop.is_set():
            prompt = f"client{n} request{i} alpha beta"
            results.append((prompt, 40, await stream(session, t, prompt, 40)))
            i += 1

    async def watch() -> None:
        while not stop.is_set():
            st = await asyncio.to_thread(status, t)
            busy_workers.update(w.id for w in st.workers if w.in_flight > 0)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [asyncio.create_task(client(n, session)) for n in range(12)]
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        assert isinstance(await asyncio.to_thread(command, t, m.ScaleModel("fake", 3)), m.Ack)
        await asyncio.to_thread(poll_until, lambda: len(workers_of(t, "fake", "ready")) == 3, 20)
        # the gateway spreads the load over the new workers
        await asyncio.to_thread(poll_until, lambda: len(busy_workers) >= 3, 10)
        await asyncio.sleep(0.5)
        reply = await asyncio.to_thread(command, t, m.ScaleModel("fake", 1))
        assert isinstance(reply, m.Ack) and "fake=1" in reply.message
        await asyncio.to_thread(poll_until, lambda: len(workers_of(t, "fake")) == 1, 30)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)
        watcher.cancel()

    assert len(results) > 30
    for prompt, n, res in results:
        assert res.status == 200 and res.stopped and not res.error, (prompt, res)  # type: ignore[attr-defined]
        assert res.text == expected_text(prompt, n), prompt  # type: ignore[attr-defined]
    drained = log_events(t, "worker_drained")
    assert len(drained) == 2 and all(e["outcome"] == "drained" for e in drained), drained
    # the two drained workers were serving when the drain began (else this test
    # would not show that in-flight requests survive a scale down)
    draining = [e for e in log_events(t, "worker_draining") if e.get("proc") == "gateway"]
    assert any(int(e["in_flight"]) > 0 for e in draining), draining  # type: ignore[call-overload]


def test_scale_unknown_target_is_an_error(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(CONFIG)
    reply = command(t, m.ScaleModel("nope", 2))
    assert isinstance(reply, m.ErrorReply) and "nope" in reply.message and "fake" in reply.message


def test_scale_a_backend_scales_each_of_its_models_and_to_zero(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    cfg = CONFIG.replace('name = "fake"', 'name = "a"') + """
[[models]]
name = "b"
backend = "fake"
"""
    t = turnout_factory(cfg)
    reply = command(t, m.ScaleModel("fake", 2))  # "fake" is the backend of a and b
    assert isinstance(reply, m.Ack) and "a=2" in reply.message and "b=2" in reply.message
    poll_until(lambda: len(workers_of(t, "a", "ready")) == 2 and len(workers_of(t, "b", "ready")) == 2, 20)
    assert isinstance(command(t, m.ScaleModel("a", 0)), m.Ack)
    poll_until(lambda: not workers_of(t, "a"), 20)
    assert next(mi for mi in status(t).models if mi.name == "a").desired == 0
    assert len(workers_of(t, "b")) == 2
    # the processes are gone too: the gateway and b's two workers are left
    poll_until(lambda: len([p for p in t.descendants() if p.status() != "zombie"]) == 3, 10)
