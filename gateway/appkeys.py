"""The gateway app's shared keys, in a module of their own so that any gateway
module can reach the bus without importing the routing (which imports the media
routes)."""

from __future__ import annotations

from aiohttp import web

from turnout.gateway.bus import Bus
from turnout.gateway.metrics import Metrics

BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)  # set only with [metrics] enabled
