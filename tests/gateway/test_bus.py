"""The gateway bus's registry of workers (gateway/bus.py): a worker that left is
forgotten when the supervisor's table no longer holds it, without ever dropping
one that registered after the table was made."""

from __future__ import annotations

import asyncio
import subprocess
import time

from gateway.bus import Bus, WorkerRef
from protocol import messages as m
from protocol.config import Config
from protocol.sockets import Endpoints


def _info(wid: str, pid: int) -> m.WorkerInfo:
    return m.WorkerInfo(id=wid, backend="fake", model="fake", pid=pid, state="ready", rss_bytes=0, in_flight=0,
                        restarts=0, uptime_s=1.0)


def _bus() -> Bus:
    bus = Bus("gw-test", Endpoints("/tmp"), Config())
    bus._worker_changed = asyncio.Event()
    return bus


async def test_a_worker_gone_with_its_process_is_forgotten_at_once() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    bus = _bus()
    bus.workers["w"] = WorkerRef("w", b"w", dead.pid, {"fake"}, 1, ready=True)
    bus.reconcile([], time.monotonic())
    assert "w" not in bus.workers


async def test_a_live_worker_missing_from_two_tables_in_a_row_is_forgotten() -> None:
    alive = subprocess.Popen(["sleep", "30"])
    try:
        bus = _bus()
        bus.workers["w"] = WorkerRef("w", b"w", alive.pid, {"fake"}, 1, ready=True)
        bus.reconcile([], time.monotonic())  # one table without it may be a late one
        assert "w" in bus.workers
        bus.reconcile([_info("w", alive.pid)], time.monotonic())  # there after all
        bus.reconcile([], time.monotonic())
        assert "w" in bus.workers
        bus.reconcile([_info("w", alive.pid + 1)], time.monotonic())  # same id, another process
        assert "w" not in bus.workers
    finally:
        alive.kill()
        alive.wait()


async def test_a_worker_that_registered_after_the_question_is_kept() -> None:
    bus = _bus()
    asked_at = time.monotonic()
    bus.workers["w"] = WorkerRef("w", b"w", 999_999_999, {"fake"}, 1, ready=True)
    bus.reconcile([], asked_at)
    assert "w" in bus.workers
