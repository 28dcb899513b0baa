"""Entry point of the gateway process: ``python -m turnout.gateway.main`` with its
:class:`GatewaySpec` as JSON on stdin (protocol/spawn.py: never on the command
line, where every local user could read the config).

Started by the supervisor. Runs aiohttp on uvloop with handler cancellation on, so
a client that disconnects cancels its handler at once (and so its worker request).
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys

import structlog
from aiohttp import web

from turnout.gateway.app import build_app, build_metrics_app
from turnout.gateway.auth import load_or_create_token
from turnout.gateway.bus import Bus
from turnout.gateway.dispatch import RequestStream
from turnout.gateway.http_guard import GuardedRunner, HttpLimits, OriginPolicy, is_loopback_bind
from turnout.gateway.metrics import Metrics
from turnout.protocol import messages as m
from turnout.protocol.config import decode_config
from turnout.protocol.exits import EXIT_BIND_ERROR
from turnout.protocol.logs import setup_logging
from turnout.protocol.paths import instance_state_dir
from turnout.protocol.sockets import Endpoints
from turnout.protocol.spawn import read_spec
from turnout.protocol.specs import GatewaySpec

log = structlog.get_logger()


def _log_cancel(st: RequestStream, done: m.Done) -> None:
    # Time from the gateway noticing the disconnect to the worker's loop stopping;
    # both are CLOCK_MONOTONIC, which is system-wide.
    log.info("request_cancelled", request_id=st.rid, worker=st.worker_id,
             cancel_ms=round((done.t_stop_ns - st.t_cancel_ns) / 1e6, 3),
             t_cancel_ns=st.t_cancel_ns, t_stop_ns=done.t_stop_ns)


def connection_cap(configured: int) -> int:
    """``max_connections``, kept below the process's file-descriptor limit (raised
    to its hard limit first), with room for the bus's sockets and the log."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard and hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (OSError, ValueError):
        return configured
    room = max(16, int(soft) - 256) if soft != resource.RLIM_INFINITY else configured
    if configured <= 0:
        return room
    if configured > room:
        log.warning("max_connections_lowered", configured=configured, to=room, nofile=soft)
    return min(configured, room)


async def serve(spec: GatewaySpec) -> int:
    config = decode_config(spec.config_json)
    token = load_or_create_token()
    bus = Bus(spec.id, Endpoints(spec.runtime_dir), config, spec.bus_secret)
    bus.on_cancel_done = _log_cancel
    bus.start()
    # Routing switches live beside the instance's pidfile and log (one per port).
    state = instance_state_dir(spec.port) / "routing.json" if spec.port else None
    sc = config.server
    origins = OriginPolicy(check_host=is_loopback_bind(spec.host) and "*" not in sc.allowed_hosts,
                           allowed_hosts=list(sc.allowed_hosts), cors_origins=list(sc.cors_origins))
    metrics = Metrics(config) if config.metrics.enabled else None
    app = build_app(bus, token, int(sc.max_body_mb * 1024 * 1024), state, origins, metrics)
    limits = HttpLimits(sc.header_timeout_s, sc.idle_timeout_s, connection_cap(sc.max_connections))
    runner = GuardedRunner(app, limits, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, spec.host, spec.port, reuse_address=True, backlog=1024)
    try:
        await site.start()
    except OSError as e:
        log.error("cannot_listen", host=spec.host, port=spec.port, error=e.strerror)
        await runner.cleanup()
        bus.close()
        return EXIT_BIND_ERROR
    port = spec.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    metrics_runner = await _serve_metrics(bus, metrics, config.metrics.port, limits) if metrics else None
    bus.announce_ready(port)
    log.info("gateway_started", host=spec.host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor owns Ctrl-C
    await stop.wait()
    log.info("gateway_stopping")
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await runner.cleanup()
    bus.close()
    return 0


async def _serve_metrics(bus: Bus, metrics: Metrics, port: int, limits: HttpLimits) -> web.BaseRunner | None:
    """``[metrics] port``: /metrics without the token, on 127.0.0.1 only (never the
    server's host: what it shows is for this machine). One that cannot listen is
    logged and left out; the API goes on."""
    if not port:
        return None
    runner = GuardedRunner(build_metrics_app(bus, metrics), HttpLimits(limits.header_timeout_s, limits.idle_timeout_s, 64),
                           access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    except OSError as e:
        log.error("metrics_cannot_listen", host="127.0.0.1", port=port, error=e.strerror)
        await runner.cleanup()
        return None
    log.info("metrics_listening", host="127.0.0.1", port=port)
    return runner


def main() -> int:
    spec = read_spec(GatewaySpec, "turnout.gateway.main")
    setup_logging("gateway")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # Windows: the default loop
        pass
    return asyncio.run(serve(spec))


if __name__ == "__main__":
    sys.exit(main())
