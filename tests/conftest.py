"""Shared fixtures: a real ``turnout up`` (supervisor, gateway and worker processes
talking over real ZeroMQ sockets) with the fake backend, and SDK clients for it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import leakcheck
from tests.upstreams.fake import FakeUpstreams
from turnout.supervisor.launch import TurnoutProcess

leakcheck.install()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The suite-wide secret check (tests/test_zz_leaks.py) runs after everything else."""
    last = [i for i in items if i.nodeid.startswith("tests/test_zz_leaks.py")]
    items[:] = [i for i in items if i not in last] + last

FAKE_CONFIG = """
[server]
worker_wait_s = 10.0
heartbeat_timeout_s = 3.0
max_body_mb = 2.0
cancel_deadline_s = 2.0

[[models]]
name = "fake"
backend = "fake"
aliases = ["claude-*", "some-local-model", "settings-main-model", "local-model"]
[models.options]
reply_tokens = 12
"""

# The same, streaming max_tokens tokens 20 ms apart: for tests that act mid-stream.
SLOW_CONFIG = FAKE_CONFIG.replace("reply_tokens = 12", "reply_tokens = 0\ntoken_delay_ms = 20")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may touch the developer's keyring, config or cache."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local/share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local/state"))
    monkeypatch.setenv("TURNOUT_LOG_LEVEL", os.environ.get("TURNOUT_LOG_LEVEL", "info"))
    monkeypatch.delenv("TURNOUT_CONFIG", raising=False)


@pytest.fixture
def turnout_factory(tmp_path: Any) -> Iterator[Callable[..., TurnoutProcess]]:
    """Start a turnout with a given config; every one started is stopped and
    checked for leftover processes and socket files at the end of the test."""
    started: list[TurnoutProcess] = []

    def start(config: str = FAKE_CONFIG, *, wait: bool = True, env: dict[str, str] | None = None) -> TurnoutProcess:
        wd = tmp_path / f"t{len(started)}"
        wd.mkdir()
        t = TurnoutProcess(config, env=env, workdir=str(wd))
        started.append(t)
        return t.start(wait=wait)

    yield start
    for t in started:
        t.stop()
        assert not t.leftovers(), t.leftovers()


@pytest.fixture(scope="module")
def turnout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    """One shared turnout with the fake backend, for tests that do not kill things."""
    t = TurnoutProcess(FAKE_CONFIG, workdir=str(tmp_path_factory.mktemp("turnout")))
    t.start()
    yield t
    t.stop()
    assert not t.leftovers(), t.leftovers()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[FakeUpstreams]:
    """Local servers speaking the cloud providers' wire formats (tests/upstreams/fake.py)."""
    f = FakeUpstreams().start()
    yield f
    f.stop()
