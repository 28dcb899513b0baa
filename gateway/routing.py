"""Where a request goes: which endpoint serves its ``model`` string, and the stream
of canonical messages that comes back.

Every source of answers (a local worker over the bus today) is a :class:`Source`:
``next_batch()`` returns the stream messages received since the last call,
``done`` is set once the terminal message has been received, and ``cancel()``
stops the work at its origin. The API adapters only ever see a Source.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from gateway.bus import Bus
from gateway.errors import ApiError
from protocol import messages as m
from protocol.chat import ChatRequest
from protocol.config import ModelConfig

BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)


class Source(Protocol):
    done: bool

    async def next_batch(self) -> list[m.StreamMsg]: ...

    def cancel(self) -> None: ...


def resolve(bus: Bus, name: str) -> ModelConfig:
    mc = bus.model_config(name)
    if mc is None:
        raise ApiError(404, f"model: {name!r} is not served by turnout (see GET /v1/models)",
                       param="model", code="model_not_found")
    return mc


async def open_source(request: web.Request, req: ChatRequest, *, count: bool = False) -> Source:
    bus = request.app[BUS]
    mc = resolve(bus, req.model)
    return await bus.open(mc, req, count=count)
