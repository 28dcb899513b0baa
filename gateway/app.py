"""The HTTP surface: routes, auth, request ids, error shapes.

Routes:
    HEAD /                          200, no body (Claude Code's preconnect; no token)
    GET  /healthz                   200 once the gateway and every configured worker is ready
    GET  /openapi.json              an OpenAPI 3.1 description of these routes (gateway/openapi.py)
    POST /v1/messages               Anthropic Messages (stream and not)
    POST /v1/messages/count_tokens  Anthropic token counting
    POST /v1/chat/completions       OpenAI Chat Completions (stream and not)
    POST /v1/responses              OpenAI Responses (stream and not; gateway/responses.py)
    POST /v1/embeddings             OpenAI Embeddings (gateway/embeddings.py)
    GET  /v1/models[/{id}]          Anthropic shape when ``anthropic-version`` is sent, else OpenAI's
    GET  /admin/workers             the supervisor's worker table, with routing and cache counts
    GET  /metrics                   Prometheus text format (gateway/metrics.py; ``[metrics] enabled``)
    GET|POST|DELETE /mcp            the MCP server, Streamable HTTP (gateway/mcp/)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec
import structlog
from aiohttp import web

from turnout.gateway import (
    anthropic,
    anthropic_stream,
    embeddings,
    media,
    openai_chat,
    openapi,
    responses,
    routing,
    telemetry,
)
from turnout.gateway.appkeys import METRICS
from turnout.gateway.auth import check_token
from turnout.gateway.bus import Bus
from turnout.gateway.collect import Collected, collect
from turnout.gateway.errors import ApiError, ApiShape, from_fail
from turnout.gateway.http_guard import OriginPolicy, api_shape, cors_on_prepare, screen
from turnout.gateway.mcp import http as mcp_http
from turnout.gateway.metrics import CONTENT_TYPE, NO_TARGET, OTHER, SERVED, TARGET_KEY, Metrics
from turnout.gateway.routing import BUS, ROUTER, Source, open_source, resolve
from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest
from turnout.protocol.ids import hex_id

log = structlog.get_logger()

TOKEN: web.AppKey[str] = web.AppKey("token", str)
STARTED_AT: web.AppKey[float] = web.AppKey("started_at", float)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
ORIGINS: web.AppKey[OriginPolicy] = web.AppKey("origins", OriginPolicy)
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi", bytes)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive"}
_enc = msgspec.json.Encoder()


def _shape(request: web.Request) -> ApiShape:
    return api_shape(request.path, request.headers)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_enc.encode(data), status=status, content_type="application/json", headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = hex_id("req_", 10)
    structlog.contextvars.bind_contextvars(request_id=rid)
    t0 = time.perf_counter()
    status = 500
    SERVED.set(NO_TARGET)  # a kept-alive connection's next request may run in the same task
    try:
        early = screen(request, request.app[ORIGINS])  # Host and Origin, before anything else
        if early is not None:
            status = early.status
            early.headers["request-id"] = rid
            return early
        if not (request.path in ("/healthz", "/openapi.json") or (request.path == "/" and request.method == "HEAD")):
            presented = request.headers.get("x-api-key")
            auth = request.headers.get("Authorization", "")
            if presented is None and auth[:7].lower() == "bearer ":
                presented = auth[7:].strip()
            if not check_token(presented, request.app[TOKEN]):
                # Never echo what was presented: it may be a real key sent by mistake.
                raise ApiError(401, "invalid or missing API token: send it as 'x-api-key' or 'Authorization: Bearer' (see `turnout token`)")
        resp = await handler(request)
        status = resp.status
    except ApiError as e:
        status = e.status
        resp = e.response(_shape(request))
    except web.HTTPRequestEntityTooLarge:
        status = 413
        resp = ApiError(413, f"request body too large: the limit is {request.app[MAX_BODY]} bytes (server.max_body_mb)").response(_shape(request))
    except web.HTTPException as e:
        status = e.status
        msg = {404: f"not found: {request.method} {request.path}", 405: f"method {request.method} not allowed on {request.path}"}.get(e.status, e.reason)
        resp = ApiError(e.status, msg).response(_shape(request))
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except RecursionError:  # msgspec (and any parser) refuses nesting deeper than the C stack allows
        status = 400
        resp = ApiError(400, "The request body is nested too deeply").response(_shape(request))
    except Exception:
        log.exception("unhandled_error", path=request.path)
        resp = ApiError(500, "internal error in turnout; see its log for details").response(_shape(request))
    finally:
        log.info("http", method=request.method, path=request.path, status=status,
                 ms=round((time.perf_counter() - t0) * 1000, 2))
        metrics = request.app.get(METRICS)
        if metrics is not None:
            res = request.match_info.route.resource  # None: no route matched (404)
            metrics.request(res.canonical if res is not None else OTHER, request.get(TARGET_KEY) or SERVED.get(),
                            status)
        structlog.contextvars.unbind_contextvars("request_id")
    if not resp.prepared:
        resp.headers["request-id"] = rid
    return resp


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise
    except ValueError as e:
        raise ApiError(400, f"cannot read the request body: {e}") from None


def _tokens_cap(request: web.Request) -> int:
    return request.app[BUS].config.server.max_tokens_limit


def _answer_cap(request: web.Request) -> int:
    """The bound on a non-streaming answer's content, in bytes."""
    return int(request.app[BUS].config.server.max_response_mb * 2**20)  # 0: none


async def _first(st: Source) -> list[m.StreamMsg]:
    """The first batch; a failure before any output becomes an HTTP error status
    (also when an upstream said it in-stream: its event is not sent on)."""
    batch = await st.next_batch()
    head = next((x for x in batch if not isinstance(x, m.Passthrough)), None)
    if isinstance(head, m.Failed):
        raise from_fail(head.kind, head.message)
    return batch


async def _pump(request: web.Request, st: Source, head: bytes, first: list[m.StreamMsg],
                encode: Callable[[m.StreamMsg], bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers=SSE_HEADERS)
    resp.headers["request-id"] = structlog.contextvars.get_contextvars().get("request_id", "")
    await resp.prepare(request)
    batch = first
    chunks = [head]
    while True:
        finished = False
        for msg in batch:
            b = encode(msg)
            if b:
                chunks.append(b)
            if isinstance(msg, m.TERMINAL):
                finished = True
        if finished:
            # The last events and the chunked terminator in one write.
            await resp.write_eof(b"".join(chunks))
            return resp
        await resp.write(b"".join(chunks))
        chunks = []
        batch = await st.next_batch()


async def _with_stream(request: web.Request, req: ChatRequest, body: Callable[[Source], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    t_arrival = time.perf_counter()
    st = await open_source(request, req)
    router = request.app.get(ROUTER)
    if router is not None:  # always, in a gateway build_app made
        obs = telemetry.observe(router.telemetry, router.config, req, st, request.app.get(METRICS), t_arrival)
        request[TARGET_KEY] = obs.target
        st = obs
    try:
        return await body(st)
    except (ConnectionResetError, ConnectionError):
        log.info("client_disconnected")
        return web.Response(status=499)
    finally:
        if not st.done:
            st.cancel()


async def messages(request: web.Request) -> web.StreamResponse:
    req = anthropic.parse_messages(await read_body(request), request.headers, max_tokens_limit=_tokens_cap(request))
    want_thinking = req.thinking is not None and req.thinking.type != "disabled"
    msg_id = anthropic_stream.new_message_id()

    async def body(st: Source) -> web.StreamResponse:
        if not req.stream:
            c = await collect(st, _answer_cap(request))
            return _json(anthropic_stream.message_body(c, req.model, msg_id, want_thinking))
        first = await _first(st)
        enc = anthropic_stream.SseEncoder(req.model, msg_id, want_thinking)
        head = b""
        if isinstance(first[0], m.Passthrough):
            enc.raw = True  # an Anthropic upstream: its events go out as they came
        elif isinstance(first[0], m.Started):
            s = first.pop(0)
            assert isinstance(s, m.Started)
            head = enc.start(s.input_tokens, s.cache_read_input_tokens)
        else:
            head = enc.start(0, 0)
        return await _pump(request, st, head, first, enc.encode)

    return await _with_stream(request, req, body)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    req = anthropic.parse_count_tokens(await read_body(request), request.headers)
    st = await open_source(request, req, count=True)
    try:
        batch = await st.next_batch()
    finally:
        if not st.done:
            st.cancel()
    msg = batch[-1]
    if isinstance(msg, m.Failed):
        raise from_fail(msg.kind, msg.message)
    if not isinstance(msg, m.Counted):
        raise ApiError(500, "worker answered a count with something else")
    return _json({"input_tokens": msg.input_tokens})


class _Encoder(Protocol):
    def start(self) -> bytes: ...
    def encode(self, msg: m.StreamMsg) -> bytes: ...


async def _answer(request: web.Request, req: ChatRequest, whole: Callable[[Collected], dict[str, Any]],
                  encoder: Callable[[], _Encoder]) -> web.StreamResponse:
    """The answer whole (``whole`` of the collected stream) or streamed (``encoder``'s events)."""

    async def body(st: Source) -> web.StreamResponse:
        if not req.stream:
            return _json(whole(await collect(st, _answer_cap(request))))
        first = await _first(st)
        enc = encoder()
        return await _pump(request, st, enc.start(), first, enc.encode)

    return await _with_stream(request, req, body)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req, include_usage = openai_chat.parse_chat(await read_body(request), request.headers,
                                                max_tokens_limit=_tokens_cap(request))
    cid = openai_chat.new_completion_id()
    return await _answer(request, req, lambda c: openai_chat.completion_body(c, req.model, cid),
                         lambda: openai_chat.ChunkEncoder(req.model, cid, include_usage))


async def responses_route(request: web.Request) -> web.StreamResponse:
    req, echo = responses.parse_responses(await read_body(request), request.headers,
                                          max_tokens_limit=_tokens_cap(request))
    rid = responses.new_response_id()
    return await _answer(request, req, lambda c: responses.response_body(c, req.model, rid, echo),
                         lambda: responses.EventEncoder(req.model, rid, echo))


class Listing(msgspec.Struct):
    """One name a client may send as ``model``."""

    id: str
    backend: str  # local backend, or the cloud provider
    context_window: int = 0
    alias_of: str = ""


def listings(bus: Bus) -> list[Listing]:
    """Local models and their exact aliases, cloud endpoints' models as
    ``endpoint/model``, and the exact ``[routing]`` aliases."""
    cfg = bus.config
    out: list[Listing] = []
    for mc in cfg.models:
        if mc.backend == "browser":
            continue  # the MCP browser tools' worker: not a model a client names
        win = bus.context_window(mc)
        out.append(Listing(mc.name, mc.backend, win))
        out.extend(Listing(a, mc.backend, win, mc.name) for a in mc.aliases if not any(c in a for c in "*?["))
    for ep in cfg.endpoints:
        out.extend(Listing(f"{ep.name}/{em.name}", ep.provider, em.context_window) for em in ep.models)
    seen = {x.id for x in out}
    for alias, target in cfg.routing.aliases.items():
        if alias not in seen and not any(c in alias for c in "*?["):
            first = target if isinstance(target, str) else (target[0] if target else "")
            out.append(Listing(alias, "alias", 0, first))
    return out


def _model_entry(x: Listing, anthropic_shape: bool, created: float) -> dict[str, Any]:
    if anthropic_shape:
        entry: dict[str, Any] = {
            "type": "model", "id": x.id, "display_name": f"{x.id} → {x.alias_of}" if x.alias_of else x.id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        }
    else:
        entry = {"id": x.id, "object": "model", "created": int(created), "owned_by": "turnout"}
    entry["backend"] = x.backend
    if x.context_window:
        entry["context_window"] = x.context_window
    return entry


async def list_models(request: web.Request) -> web.StreamResponse:
    created = request.app[STARTED_AT]
    a = "anthropic-version" in request.headers
    data = [_model_entry(x, a, created) for x in listings(request.app[BUS])]
    if a:
        return _json({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None})
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.StreamResponse:
    name = request.match_info["model_id"]
    for x in listings(request.app[BUS]):
        if x.id == name:
            return _json(_model_entry(x, "anthropic-version" in request.headers, request.app[STARTED_AT]))
    bus = request.app[BUS]
    mc = resolve(bus, name)  # a glob alias of a local model, else 404
    x = Listing(name, mc.backend, bus.context_window(mc), mc.name)
    return _json(_model_entry(x, "anthropic-version" in request.headers, request.app[STARTED_AT]))


async def head_root(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def root(request: web.Request) -> web.StreamResponse:
    return _json({"name": "turnout", "status": "ok"})


def expected_workers(bus: Bus) -> int:
    return sum(mc.workers for mc in bus.config.models)


async def healthz(request: web.Request) -> web.StreamResponse:
    bus = request.app[BUS]
    want = expected_workers(bus)
    try:  # what the supervisor wants now: scale, evictions and idle unloads change it
        st = await bus.command(m.Status(), timeout=1.0)
        if isinstance(st, m.StatusReply):
            want = sum(mi.desired for mi in st.models)
    except TimeoutError:
        pass
    # Counted after the reply: it made the bus forget workers the supervisor does not have.
    ready = sum(1 for w in bus.workers.values() if w.ready and not w.draining)
    ok = ready >= want
    return _json({"status": "ok" if ok else "starting", "workers_ready": ready, "workers_expected": want},
                 status=200 if ok else 503)


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def admin_workers(request: web.Request) -> web.StreamResponse:
    bus = request.app[BUS]
    try:
        reply = await bus.command(m.ListWorkers())
    except TimeoutError:
        raise ApiError(503, "the supervisor did not answer") from None
    if not isinstance(reply, m.WorkersReply):
        raise ApiError(500, "unexpected reply from the supervisor")
    out = []
    for w in reply.workers:
        d = msgspec.structs.asdict(w)
        ref = bus.workers.get(w.id)
        d["in_flight"] = len(ref.in_flight) if ref is not None else 0
        if ref is not None:
            # Where the gateway sent requests (gateway/affinity.py) and what the
            # worker's answers read from its KV cache.
            d["routed"] = dict(ref.routed)
            d["prompt_tokens"] = ref.prompt_tokens
            d["cache_read_input_tokens"] = ref.cache_read_tokens
        out.append(d)
    return _json(out)


async def metrics_route(request: web.Request) -> web.StreamResponse:
    """Prometheus's text format: what the gateway recorded, the supervisor's Status
    (asked now, over the bus; without its figures if it does not answer within a
    second) and the gateway's in-flight requests per worker."""
    bus = request.app[BUS]
    status: m.StatusReply | None = None
    try:
        reply = await bus.command(m.Status(), timeout=1.0)
        if isinstance(reply, m.StatusReply):
            status = reply
    except TimeoutError:
        pass
    names = [mc.name for mc in bus.config.models]  # a worker's models hold its aliases too
    loads = [(next((n for n in names if n in w.models), OTHER), w.id, len(w.in_flight)) for w in bus.workers.values()]
    body = request.app[METRICS].render(status, loads, bus.dropped_frames)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def _loopback_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    early = screen(request, request.app[ORIGINS])  # a DNS-rebinding page names its own host
    return early if early is not None else await handler(request)


def build_metrics_app(bus: Bus, metrics: Metrics) -> web.Application:
    """The unauthenticated listener (``[metrics] port``, on 127.0.0.1 only):
    ``GET /metrics`` and nothing else; the Host must be a loopback name, and a
    browser's request (with an Origin) is refused, as on the main port."""
    app = web.Application(middlewares=[_loopback_host], client_max_size=1024)
    app[ORIGINS] = OriginPolicy(check_host=True)
    app[BUS] = bus
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_route, allow_head=False)
    return app


def build_app(bus: Bus, token: str, max_body_bytes: int, state_path: Path | None = None,
              origins: OriginPolicy | None = None, metrics: Metrics | None = None) -> web.Application:
    """``state_path``: where routing switches are kept across restarts (routing.json).
    ``origins``: the Host and Origin policy (default: the one for a loopback bind
    with nothing configured). ``metrics``: what /metrics serves and the routes
    record (None: no /metrics, nothing recorded)."""
    app = web.Application(middlewares=[middleware], client_max_size=max_body_bytes)
    app[ORIGINS] = origins or OriginPolicy(check_host=True)
    app.on_response_prepare.append(cors_on_prepare(app[ORIGINS]))
    app[BUS] = bus
    app[TOKEN] = token
    app[STARTED_AT] = time.time()
    app[MAX_BODY] = max_body_bytes
    r = app.router
    r.add_route("HEAD", "/", head_root)
    r.add_get("/", root, allow_head=False)
    r.add_get("/healthz", healthz)
    app[OPENAPI] = _enc.encode(openapi.document())
    r.add_get("/openapi.json", openapi_json)
    r.add_post("/v1/messages", messages)
    r.add_post("/v1/messages/count_tokens", count_tokens)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/responses", responses_route)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model_id:.+}", get_model)
    r.add_get("/admin/workers", admin_workers)
    media.register_routes(app)
    embeddings.register_routes(app)
    routing.setup(app, bus.config, state_path)  # cloud endpoints: router state, /admin/endpoints, /admin/sessions
    mcp_http.register(app)  # /mcp (after routing: its tools use the router)
    if metrics is not None:
        app[METRICS] = metrics
        bus.metrics = metrics  # queue wait, cancel latency
        app[routing.ROUTER].metrics = metrics  # upstream errors, fallbacks
        r.add_get("/metrics", metrics_route, allow_head=False)
    return app
