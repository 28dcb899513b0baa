"""Where a request goes: which endpoint serves its ``model`` string, and the stream
of canonical messages that comes back.

Every source of answers (a local worker over the bus, a cloud provider over HTTPS)
is a :class:`Source`: ``next_batch()`` returns the stream messages received since
the last call, ``done`` is set once the terminal message has been received, and
``cancel()`` stops the work at its origin. The API adapters only ever see a Source.

Choosing (:func:`plan`, pure: a function of the config, the request and the
session's override) gives an ordered list of targets:

1. the session's override (set through ``/admin/sessions/{id}``, by the MCP tools);
2. the first routing rule that matches: ``background`` (a haiku-family name, or a
   small tool-less request), ``thinking``, ``long_context`` (the conversation is
   longer than the first target's window), ``images``;
3. the requested name: a ``[routing.aliases]`` entry (exact, glob, or Claude Code's
   opus/sonnet/haiku families), ``endpoint/model``, a local ``[[models]]`` name or
   alias, a model an endpoint lists; else ``[routing] default``;
4. ``[routing] fallback``.

Targets whose context window is known and too small, or that cannot see an image
the request carries, are skipped. The request goes to the first target; on a
connection error, 429 or 5xx before anything has reached the client, to the next.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import msgspec
import structlog
from aiohttp import web

from turnout.gateway.appkeys import BUS
from turnout.gateway.bus import Bus
from turnout.gateway.errors import ApiError
from turnout.gateway.keys import KeyCache
from turnout.gateway.media.images import ocr_chat_images
from turnout.gateway.metrics import LOCAL, Metrics
from turnout.gateway.planning import Target, estimate_tokens, has_images, plan, resolve_target
from turnout.gateway.providers import DEFAULT_BASE_URLS, provider_for
from turnout.gateway.providers.base import CloudSource, Outcome, StaticSource, count_upstream
from turnout.gateway.telemetry import Telemetry
from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest
from turnout.protocol.config import Config, EndpointConfig, ModelConfig, validate

log = structlog.get_logger()


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


# -------------------------------------------------------------------- runtime


MAX_KEPT_OVERRIDES = 10_000


class _RoutingState(msgspec.Struct):
    """routing.json: the switches made in conversation (endpoint_set, /admin/sessions)."""

    global_target: str | None = None
    sessions: dict[str, str] = msgspec.field(default_factory=dict)


class Router:
    """The gateway's routing state.

    Options:
        config: endpoints, routing, local models.
        keys: where keys are read (the keyring, cached).
    Holds the per-session overrides, the telemetry and the HTTP client session
    (created at app start-up, closed at clean-up)."""

    def __init__(self, config: Config, keys: KeyCache | None = None, state_path: Path | None = None) -> None:
        self.config = config
        self.keys = keys or KeyCache()
        self.telemetry = Telemetry()
        self.overrides: dict[str, str] = {}  # session id -> target (endpoint_set, scope session)
        self.global_override: str | None = None  # every session without its own (scope global)
        self.http: aiohttp.ClientSession | None = None
        self.metrics: Metrics | None = None  # set by the app with [metrics] enabled
        # Where the overrides are kept, so a restarted gateway (a crash, an upgrade,
        # `turnout down` and `up`) routes every conversation as it was told to.
        self.state_path = state_path
        self._load()

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            st = msgspec.json.decode(self.state_path.read_bytes(), type=_RoutingState)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("routing_state_unreadable", path=str(self.state_path), error=str(e)[:200])
            return
        valid = lambda t: bool(resolve_target(self.config, t, 1))  # noqa: E731 - the config may have changed
        self.global_override = st.global_target if st.global_target and valid(st.global_target) else None
        self.overrides = {sid: t for sid, t in st.sessions.items() if valid(t)}
        dropped = len(st.sessions) - len(self.overrides) + (st.global_target is not None and self.global_override is None)
        log.info("routing_state_loaded", sessions=len(self.overrides), global_target=self.global_override,
                 dropped=dropped)

    def _save(self) -> None:
        if self.state_path is None:
            return
        if len(self.overrides) > MAX_KEPT_OVERRIDES:  # the oldest first: dicts keep insertion order
            for sid in list(self.overrides)[:len(self.overrides) - MAX_KEPT_OVERRIDES]:
                del self.overrides[sid]
        data = msgspec.json.encode(_RoutingState(self.global_override, self.overrides))
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.state_path)
        except OSError as e:  # routing still works; it just will not survive a restart
            log.warning("routing_state_unwritable", path=str(self.state_path), error=e.strerror)

    def clear_override(self, sid: str) -> None:
        if self.overrides.pop(sid, None) is not None:
            self._save()

    def set_global(self, target: str | None) -> None:
        self.global_override = target
        self._save()

    @property
    def active(self) -> bool:
        r = self.config.routing
        return bool(self.config.endpoints or r.aliases or r.rules or r.default or r.fallback)

    def key_name(self, ep: EndpointConfig) -> str:
        return ep.key if ep.key is not None else ep.name

    def set_override(self, sid: str, target: str) -> list[Target]:
        targets = resolve_target(self.config, target, 1)
        if not targets:
            raise ApiError(404, f"target: {target!r} names no endpoint/model, endpoint model or local model",
                           param="target")
        self.overrides.pop(sid, None)  # re-inserted last: the most recent survive the cap
        self.overrides[sid] = target
        self._save()
        return targets

    async def start(self) -> None:
        # No cookie jar: a proxy must not carry one user's upstream cookies into
        # another's requests. Proxies from the environment: providers.base.env_proxy.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
            auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    def _cloud(self, t: Target, req: ChatRequest, raw: bytes | None, rid: str) -> CloudSource:
        ep = t.endpoint
        assert ep is not None and self.http is not None
        kname = self.key_name(ep)
        key = self.keys.get(kname) if kname else None
        if not key and ep.provider != "openai_compatible" and kname:
            raise ApiError(400, f"no API key for endpoint {ep.name!r} ({ep.provider}): set it with "
                                f"`turnout keys set {kname}`")
        r = self.config.routing
        t0 = time.perf_counter()

        def done(o: Outcome) -> None:
            self.telemetry.record(ep.name, ok=o.ok, ttft_s=o.ttft_s, output_tokens=o.output_tokens,
                                  gen_s=o.gen_s, cancelled=o.cancelled)
            if self.metrics is not None and not o.ok and not o.cancelled:
                self.metrics.upstream_error(ep.name, o.status)
            # One line per request at info only when something went wrong: the
            # access line already records each request, and a log line costs.
            (log.debug if o.ok else log.info)("upstream_done", endpoint=ep.name, model=t.model, ok=o.ok, status=o.status,
                     cancelled=o.cancelled, ttft_ms=round(o.ttft_s * 1000, 1) if o.ttft_s else None,
                     ms=round((time.perf_counter() - t0) * 1000, 1), output_tokens=o.output_tokens)
            if o.ok and req.session_id:
                self.telemetry.session(req.session_id, tokens=(o.input_tokens or estimate_tokens(req)) + o.output_tokens,
                                       endpoint=t.label, model=t.model)

        return CloudSource(rid, provider_for(ep.provider), ep, t.model, req, key, raw, self.http,
                           retries=max(0, r.retries), backoff_s=r.backoff_s, max_wait_s=r.max_retry_after_s,
                           on_outcome=done)

    async def _count(self, t: Target, req: ChatRequest, raw: bytes | None) -> int:
        """The endpoint's own count where it has one (Anthropic, Gemini), else an
        estimate (OpenAI and compatible servers have no counting call)."""
        ep = t.endpoint
        assert ep is not None and self.http is not None
        kname = self.key_name(ep)
        key = self.keys.get(kname) if kname else None
        n = await count_upstream(self.http, provider_for(ep.provider), ep, t.model, req, key, raw)
        return n if n is not None else estimate_tokens(req)

    async def open(self, request: web.Request, bus: Bus, req: ChatRequest, count: bool) -> Source:
        override = (self.overrides.get(req.session_id) if req.session_id else None) or self.global_override
        targets = plan(self.config, req, override)
        if not targets:
            raise ApiError(404, f"model: {req.model!r} is not served by turnout: no local model, endpoint "
                                f"model or [routing] alias matches it (see GET /admin/endpoints)",
                           param="model", code="model_not_found")
        raw = await request.read() if req.api == "anthropic" else None
        if count:
            t = targets[0]
            if t.local is not None:
                return await bus.open(t.local, req, count=True)
            return StaticSource([m.Counted("", 0, await self._count(t, req, raw))])
        rid = str(structlog.contextvars.get_contextvars().get("request_id", ""))
        for i, t in enumerate(targets):
            last = i == len(targets) - 1
            try:
                if t.local is not None:
                    src: Source = await bus.open(t.local, req)
                    if req.session_id:
                        self.telemetry.session(req.session_id, tokens=estimate_tokens(req), endpoint=t.label,
                                               model=t.model)
                    return src
                cs = self._cloud(t, req, raw, rid)
                await cs.wait_first()
                log.debug("routed", target=t.label, attempt=i)
                return cs
            except ApiError as e:
                if last or not (e.status == 429 or e.status >= 500):
                    raise
                log.warning("fallback", target=t.label, status=e.status, next=targets[i + 1].label)
                if self.metrics is not None:
                    self.metrics.fallback(t.endpoint.name if t.endpoint is not None else LOCAL)
        raise AssertionError("unreachable")


ROUTER: web.AppKey[Router] = web.AppKey("router", Router)


BLIND_BACKENDS = ("llama_cpp", "mlx_lm", "fake")  # local backends that cannot see images


async def open_source(request: web.Request, req: ChatRequest, *, count: bool = False) -> Source:
    bus = request.app[BUS]
    if bus.config.media.ocr_images and not count and has_images(req):
        local = bus.model_config(req.model)
        if local is not None and local.backend in BLIND_BACKENDS:
            req = await ocr_chat_images(bus, req)
    router = request.app.get(ROUTER)
    if router is None or not (router.active or router.overrides or router.global_override):
        mc = resolve(bus, req.model)
        return await bus.open(mc, req, count=count)
    return await router.open(request, bus, req, count)


# ----------------------------------------------------------------- admin API

_enc = msgspec.json.Encoder()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_enc.encode(data), status=status, content_type="application/json")


def _public_url(url: str) -> str:
    # A base URL may carry credentials (https://user:pass@host): never show them.
    try:
        from yarl import URL

        return str(URL(url).with_user(None)) if url else url
    except ValueError:
        return ""


async def admin_endpoints(request: web.Request) -> web.StreamResponse:
    """Endpoints with their models, whether a key is set (never the key), rolling
    telemetry; routing; sessions with their size and override."""
    router = request.app[ROUTER]
    cfg = router.config
    eps = []
    for ep in cfg.endpoints:
        kname = router.key_name(ep)
        eps.append({
            "name": ep.name, "provider": ep.provider,
            "base_url": _public_url(ep.base_url or DEFAULT_BASE_URLS.get(ep.provider, "")),
            "key_name": kname, "key_set": bool(kname) and router.keys.has(kname),
            "models": [msgspec.structs.asdict(x) for x in ep.models],
            "context_window": max((x.context_window for x in ep.models), default=0),
            "telemetry": router.telemetry.endpoint_summary(ep.name),
        })
    sessions = [{"id": sid, "tokens": s.tokens, "endpoint": s.endpoint, "model": s.model,
                 "override": router.overrides.get(sid)} for sid, s in router.telemetry.sessions.items()]
    return _json({
        "endpoints": eps,
        "local_models": [{"name": mc.name, "backend": mc.backend, "context_window": mc.context_window,
                          "telemetry": router.telemetry.endpoint_summary(mc.name)} for mc in cfg.models],
        "routing": msgspec.to_builtins(cfg.routing),
        "sessions": sessions,
    })


class _OverrideBody(msgspec.Struct):
    target: str


async def session_get(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    sid = request.match_info["sid"]
    s = router.telemetry.sessions.get(sid)
    return _json({"id": sid, "override": router.overrides.get(sid), "tokens": s.tokens if s else 0,
                  "endpoint": s.endpoint if s else None})


async def session_put(request: web.Request) -> web.StreamResponse:
    """Route this session's next requests to ``target`` (``endpoint/model``, an
    alias, a local model) until cleared."""
    router = request.app[ROUTER]
    sid = request.match_info["sid"]
    try:
        body = msgspec.json.decode(await request.read(), type=_OverrideBody)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ApiError(400, f"body must be {{\"target\": \"endpoint/model\"}}: {e}", param="target") from None
    targets = router.set_override(sid, body.target)
    log.info("session_override", session=sid, target=body.target)
    return _json({"id": sid, "override": body.target, "resolves_to": [t.label for t in targets]})


async def session_delete(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    sid = request.match_info["sid"]
    router.clear_override(sid)
    return _json({"id": sid, "override": None})


def setup(app: web.Application, config: Config, state_path: Path | None = None) -> None:
    """Install the router on ``app``: its state (kept in ``state_path`` when given),
    its admin routes, and the HTTP client session's life (opened on start-up,
    closed on clean-up)."""
    problems = validate(config)
    if problems:
        raise ValueError("; ".join(problems))
    router = Router(config, state_path=state_path)
    app[ROUTER] = router

    async def on_startup(_: web.Application) -> None:
        await router.start()

    async def on_cleanup(_: web.Application) -> None:
        await router.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_get("/admin/endpoints", admin_endpoints)
    r.add_get("/admin/sessions/{sid}", session_get)
    r.add_put("/admin/sessions/{sid}", session_put)
    r.add_delete("/admin/sessions/{sid}", session_delete)
