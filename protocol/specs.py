"""Launch specs: what the supervisor hands each child process, as JSON on its stdin
(protocol/spawn.py: never on the command line or in the environment)."""

from __future__ import annotations

import msgspec


class GatewaySpec(msgspec.Struct):
    """Everything the gateway process (``python -m gateway.main``) needs."""

    id: str
    runtime_dir: str
    host: str
    port: int
    config_json: str
    bus_secret: str = ""  # the instance's bus secret (protocol/sockets.py)
