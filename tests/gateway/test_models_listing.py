"""What /v1/models lists: local models and exact aliases, cloud endpoint models,
routing aliases, with context windows."""

from __future__ import annotations

import msgspec

from turnout.gateway.app import listings
from turnout.gateway.bus import Bus
from turnout.gateway.dispatch import WorkerRef
from turnout.protocol.config import Config
from turnout.protocol.sockets import Endpoints


def test_listing_covers_local_cloud_and_aliases() -> None:
    cfg = msgspec.toml.decode(b"""
[[models]]
name = "local"
backend = "fake"
aliases = ["claude-*", "my-local"]

[[endpoints]]
name = "gem"
provider = "gemini"
[[endpoints.models]]
name = "gemini-2.5-flash"
context_window = 1048576

[routing]
aliases = { fast = "gem/gemini-2.5-flash", "claude-haiku-*" = "gem/gemini-2.5-flash" }
""", type=Config)
    bus = Bus("gw-test", Endpoints("/tmp"), cfg)
    bus.workers["w"] = WorkerRef("w", b"w", 1, {"local"}, 1, ready=True, context_window=32768)
    got = {x.id: x for x in listings(bus)}
    assert set(got) == {"local", "my-local", "gem/gemini-2.5-flash", "fast"}  # globs are not names
    assert got["local"].context_window == 32768  # as loaded by the worker
    assert got["my-local"].alias_of == "local"
    assert got["gem/gemini-2.5-flash"].backend == "gemini" and got["gem/gemini-2.5-flash"].context_window == 1048576
    assert got["fast"].alias_of == "gem/gemini-2.5-flash"
