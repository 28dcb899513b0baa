"""Launch specs: what the supervisor hands each child process, as JSON on its stdin
(protocol/spawn.py: never on the command line or in the environment)."""

from __future__ import annotations

from typing import Any

import msgspec


class GatewaySpec(msgspec.Struct):
    """Everything the gateway process (``python -m turnout.gateway.main``) needs."""

    id: str
    runtime_dir: str
    host: str
    port: int
    config_json: str
    bus_secret: str = ""  # the instance's bus secret (protocol/sockets.py)


class WorkerSpec(msgspec.Struct):
    """Everything a worker process needs, passed by the supervisor as JSON."""

    id: str
    backend: str
    model: str
    runtime_dir: str
    gateway_ids: list[str]
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    path: str = ""
    context_window: int = 0
    aliases: list[str] = msgspec.field(default_factory=list)
    # The instance's bus secret: presented on every connection (protocol/sockets.py).
    # In the spec on stdin, never on the command line or in the environment.
    bus_secret: str = ""
