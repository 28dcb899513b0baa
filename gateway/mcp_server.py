"""turnout's MCP server: Claude Code (or any MCP client) inspects and switches its
own backend by asking.

Transports:
    POST/GET/DELETE /mcp   Streamable HTTP on the gateway, behind the gateway's token
                           (the auth middleware in gateway/app.py covers it).
    turnout mcp            stdio, for clients that spawn servers: a thin proxy that
                           forwards every call to the running gateway's ``/mcp``
                           with the token (the same tools, one implementation).

Tools (each does real work in the gateway process):
    endpoint_list, endpoint_status, endpoint_set, endpoint_recommend, models_list,
    model_load, model_unload, workers_status, workers_scale, system_status,
    keys_status, usage; and the media tools of gateway/media.py (ocr_image,
    transcribe_audio, speak_text, upscale_image).

Which session a call is about: Claude Code sends every MCP tool call with
``_meta["claudecode/toolUseId"]``, the id of the ``tool_use`` block the model
produced. The gateway streamed that block itself, for a request carrying the
session id (``X-Claude-Code-Session-Id``), so ``gateway.telemetry.observe`` remembers
``tool_use id -> session`` for tools named ``mcp__*`` and the tool looks it up:
exact, even with several Claude Code sessions open. Fallbacks, in order: an
explicit ``session_id`` argument, an ``X-Claude-Code-Session-Id`` header on the MCP
request (``turnout mcp`` forwards ``$CLAUDE_CODE_SESSION_ID``), the most recently
active session (the answer says so).

The router's telemetry (gateway/telemetry.py, kept whether MCP is on or off) holds
the usage ledger (tokens and cost per endpoint and per session) and local models'
TTFT and tokens/s, so ``endpoint_recommend`` compares local and cloud on measured
figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import psutil
import structlog
from aiohttp import web
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from gateway import recommend as rec
from gateway.errors import ApiError
from gateway.routing import BUS, ROUTER, Router, resolve_target
from protocol import messages as m
from protocol.config import NON_CHAT_BACKENDS, Config, ModelConfig, gateway_url

log = structlog.get_logger()

SESSION_HEADER = "X-Claude-Code-Session-Id"
TOOL_USE_META = "claudecode/toolUseId"
_CLEAR_WORDS = {"default", "auto", "automatic", "reset", "clear", "none", "off", "unset", "normal"}
_LOCAL_WORDS = {"local", "locally", "offline", "on-device", "ondevice", "mine", "own", "laptop", "machine"}


# ---------------------------------------------------------------- bookkeeping


@dataclass
class McpState:
    """What the MCP tools share inside one gateway: the SDK server and its HTTP
    session manager (the tool_use index and the usage ledger are the router's
    telemetry, kept whether MCP is on or off)."""

    server: Any
    manager: Any


MCP: web.AppKey[McpState] = web.AppKey("mcp", McpState)


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Choice:
    """One name ``endpoint_set`` can route to."""

    label: str
    local: bool
    provider: str
    window: int
    input_price: float = 0.0
    output_price: float = 0.0


def choices(app: web.Application, cfg: Config) -> list[Choice]:
    out = [Choice(mc.name, True, mc.backend, app[BUS].context_window(mc)) for mc in cfg.models
           if mc.backend not in NON_CHAT_BACKENDS]
    for ep in cfg.endpoints:
        out.extend(Choice(f"{ep.name}/{em.name}", False, ep.provider, em.context_window, em.input_price,
                          em.output_price) for em in ep.models)
    return out


def _words(s: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", s.lower()) if w}


def match_target(text: str, options: list[Choice], cfg: Config, ready: set[str]) -> str | None:
    """The routable name ``text`` means, forgivingly: an exact name (``endpoint/model``,
    alias, local model), "local"/"my local one" (a local model, a ready one first),
    or words ("gemini flash", "gpt 4.1") contained in exactly one endpoint's name.
    None: clear the override ("default", "auto"). Raises ValueError, naming the
    choices, when nothing or several things match."""
    t = text.strip()
    w = _words(t)
    if not t or (w <= _CLEAR_WORDS | {"the", "use", "go", "back", "to", "routing"} and w & _CLEAR_WORDS):
        return None
    if resolve_target(cfg, t, 1):
        return t
    names = ", ".join(c.label for c in options) or "none configured"
    if w & _LOCAL_WORDS:
        locals_ = [c for c in options if c.local]
        if not locals_:
            raise ValueError(f"no local model is configured (choices: {names})")
        rest = w - _LOCAL_WORDS - {"my", "the", "a", "one", "model", "use", "on"}
        if rest:  # "local qwen": narrow down among local models
            narrowed = [c for c in locals_ if rest <= _words(c.label)]
            locals_ = narrowed or locals_
        return next((c.label for c in locals_ if c.label in ready), locals_[0].label)
    filler = {"use", "try", "switch", "to", "the", "a", "model", "please", "for", "this", "my", "one", "on"}
    want = w - filler
    hits = [c for c in options if want and want <= _words(c.label) | _words(c.provider)]
    if len(hits) == 1:
        return hits[0].label
    if len(hits) > 1:
        exact_model = [c for c in hits if _words(c.label.split("/")[-1]) == want]
        if len(exact_model) == 1:
            return exact_model[0].label
        raise ValueError(f"{text!r} matches several endpoints: {', '.join(c.label for c in hits)}; name one")
    close = difflib.get_close_matches(t.lower(), [c.label.lower() for c in options], n=1, cutoff=0.6)
    if close:
        return next(c.label for c in options if c.label.lower() == close[0])
    raise ValueError(f"no endpoint matches {text!r}; choices: {names}")


# --------------------------------------------------------------------- tools


class ToolFailure(ToolError):
    """A tool that cannot do what was asked; the message says what to do (the
    client sees it as the tool's error result)."""


# Argument types, at module level: the SDK resolves the tools' (string) annotations
# against the module's globals to build each JSON schema.
SessionArg = Annotated[str, Field(description="Claude Code session id; leave empty: the calling conversation is "
                                              "found automatically")]
FileArg = Annotated[str, Field(description="a file path, or the content as base64 (a data: URL too)")]
OutArg = Annotated[str, Field(description="where to write the result (empty: a new temporary file)")]
ModelArg = Annotated[str, Field(description="which configured model (empty: the first of its kind)")]
LocalModelArg = Annotated[str, Field(description="a local model name (see models_list)")]


def _router(app: web.Application) -> Router:
    r = app.get(ROUTER)
    if r is None:
        raise ToolFailure("routing is not set up in this gateway")
    return r


def _session_for(app: web.Application, ctx: Any, explicit: str) -> tuple[str, str]:
    """(session id, how it was found); ("", why not) when there is none."""
    if explicit:
        return explicit, "given"
    rc = getattr(ctx, "request_context", None) if ctx is not None else None
    meta = getattr(rc, "meta", None) or {}
    tuid = meta.get(TOOL_USE_META) if isinstance(meta, dict) else None
    if isinstance(tuid, str):
        router = app.get(ROUTER)
        sid = router.telemetry.tool_uses.get(tuid) if router is not None else None
        if sid:
            return sid, "the conversation that called this tool"
    headers = None
    with contextlib.suppress(Exception):
        headers = ctx.headers
    if headers is not None:
        sid = headers.get(SESSION_HEADER) or headers.get(SESSION_HEADER.lower())
        if sid:
            return sid, "the client's session header"
    router = app.get(ROUTER)
    if router is not None and router.telemetry.sessions:
        sid = next(reversed(router.telemetry.sessions))
        return sid, "the most recently active session (no session id came with this call)"
    return "", "no session has sent a request yet"


def _current_label(router: Router, sid: str) -> str:
    if not sid:
        return ""
    ov = router.overrides.get(sid)
    if ov:
        ts = resolve_target(router.config, ov, 1)
        return ts[0].label if ts else ov
    s = router.telemetry.sessions.get(sid)
    return s.endpoint if s else ""


def _ready_models(app: web.Application) -> set[str]:
    out: set[str] = set()
    for w in app[BUS].workers.values():
        if w.ready:
            out.update(w.models)
    return out


def _set_global(app: web.Application, target: str | None) -> None:
    """Route every session that has no choice of its own to ``target`` (None: back
    to the configuration)."""
    _router(app).set_global(target)


def _window_of(cands: list[Choice], label: str) -> int:
    return next((c.window for c in cands if c.label == label), 0)


async def endpoint_set(app: web.Application, ctx: Any, target: str, scope: str, session_id: str) -> dict[str, Any]:
    router = _router(app)
    cfg = router.config
    options = choices(app, cfg)
    try:
        name = match_target(target, options, cfg, _ready_models(app))
    except ValueError as e:
        raise ToolFailure(str(e)) from None
    if scope == "global":
        _set_global(app, name)
        log.info("endpoint_set", scope="global", target=name)
        if name is None:
            return {"scope": "global", "target": None,
                    "summary": "Every request routes by the configuration again (global switch cleared)."}
        labels = [t.label for t in resolve_target(cfg, name, 1)]
        return {"scope": "global", "target": name, "resolves_to": labels,
                "summary": f"Every request now goes to {labels[0]} (sessions with their own choice keep it; "
                           f"background requests follow the routing rules)."}
    sid, how = _session_for(app, ctx, session_id)
    if not sid:
        raise ToolFailure(f"cannot tell which session to switch: {how}. Send a request first, pass session_id, "
                          f"or use scope='global'")
    before = _current_label(router, sid)
    if name is None:
        router.clear_override(sid)
        log.info("endpoint_set", scope="session", session=sid, target=None)
        return {"scope": "session", "session_id": sid, "session_found_by": how, "target": None,
                "summary": "This session routes by the configuration again (its override is cleared)."}
    try:
        targets = router.set_override(sid, name)
    except ApiError as e:
        raise ToolFailure(e.message) from None
    label = targets[0].label
    log.info("endpoint_set", scope="session", session=sid, target=name)
    s = router.telemetry.sessions.get(sid)
    tokens = s.tokens if s else 0
    window = targets[0].window or _window_of(options, label)
    warn = ""
    if window and tokens > window:
        warn = (f" Warning: the conversation is at {rec.fmt_tokens(tokens)} tokens and {label}'s window is "
                f"{rec.fmt_tokens(window)}: requests will skip it for a bigger fallback until Claude Code compacts.")
    summary = (f"This session now goes to {label}" + (f" (was {before})" if before and before != label else "")
               + f", from its next request on; other sessions are untouched.{warn}")
    return {"scope": "session", "session_id": sid, "session_found_by": how, "target": name,
            "resolves_to": [t.label for t in targets], "previous": before or None, "summary": summary}


def _candidates(app: web.Application, router: Router, current: str) -> list[rec.Candidate]:
    cfg = router.config
    failed = app[BUS].model_failed
    out = []
    for c in choices(app, cfg):
        tel = router.telemetry.endpoint_summary(c.label if c.local else c.label.split("/", 1)[0])
        available, why = True, ""
        if c.local:
            if c.label in failed:
                available, why = False, f"parked: {failed[c.label]}"
        else:
            ep = next(e for e in cfg.endpoints if e.name == c.label.split("/", 1)[0])
            kname = router.key_name(ep)
            if kname and ep.provider != "openai_compatible" and not router.keys.has(kname):
                available, why = False, f"no API key: turnout keys set {kname}"
        ttft = tel.get("ttft_ms_p50")
        out.append(rec.Candidate(
            c.label, c.local, c.window, ttft / 1000 if ttft is not None else None, tel.get("tokens_per_s"),
            float(tel.get("error_rate") or 0.0), int(tel.get("requests") or 0), c.input_price, c.output_price,
            available, why, current == c.label))
    return out


async def endpoint_recommend(app: web.Application, ctx: Any, session_id: str, apply: bool) -> dict[str, Any]:
    router = _router(app)
    sid, how = _session_for(app, ctx, session_id)
    s = router.telemetry.sessions.get(sid) if sid else None
    tokens = s.tokens if s else 0
    current = _current_label(router, sid)
    mc = router.config.mcp
    r = rec.recommend(tokens, _candidates(app, router, current), output_tokens=mc.recommend_output_tokens,
                      usd_per_second=mc.usd_per_second)
    out: dict[str, Any] = {
        "session_id": sid or None, "session_found_by": how, "conversation_tokens": tokens,
        "current": current or None, "summary": r.summary,
        "ranked": [{"endpoint": x.label, "usable": x.usable, "reason": x.reason,
                    "score_s": x.cost_s if x.usable else None} for x in r.ranked],
    }
    best = r.best
    if (apply or mc.auto_apply_recommendation) and best is not None and sid and best.label != current:
        router.set_override(sid, best.label)
        log.info("endpoint_recommend_applied", session=sid, target=best.label)
        out["applied"] = best.label
        why = "as asked" if apply else "auto_apply_recommendation is on in [mcp]"
        out["summary"] = f"{r.summary} Applied ({why}): this session now goes to {best.label}."
    return out


def _workers(app: web.Application, reply: m.WorkersReply) -> list[dict[str, Any]]:
    bus = app[BUS]
    out = []
    for w in reply.workers:
        d = msgspec.structs.asdict(w)
        ref = bus.workers.get(w.id)
        d["gateway_in_flight"] = len(ref.in_flight) if ref is not None else 0
        d["rss_mb"] = round(w.rss_bytes / 2**20, 1)
        out.append(d)
    return out


async def _command(app: web.Application, cmd: m.Command, timeout: float = 10.0) -> m.FromSupervisor:
    try:
        return await app[BUS].command(cmd, timeout=timeout)
    except TimeoutError:
        raise ToolFailure("the supervisor did not answer; is turnout shutting down? (`turnout status`)") from None


def _reply_text(reply: m.FromSupervisor) -> str:
    if isinstance(reply, m.Ack):
        return reply.message or "ok"
    if isinstance(reply, m.ErrorReply | m.LoadRefused | m.Refused):
        extra = f" (retry after {reply.retry_after_s:g} s)" if isinstance(reply, m.LoadRefused) and reply.retry_after_s else ""
        raise ToolFailure(reply.message + extra)
    raise ToolFailure(f"unexpected reply from the supervisor: {type(reply).__name__}")


def _local_model(cfg: Config, name: str) -> ModelConfig:
    mc = cfg.resolve_model(name)
    if mc is None:
        raise ToolFailure(f"no local model {name!r}; local models: {', '.join(x.name for x in cfg.models) or 'none'}")
    return mc


async def _wait_ready(app: web.Application, model: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if model in _ready_models(app):
            return True
        await asyncio.sleep(0.1)
    return False


def _system() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"memory_total_mb": vm.total // 2**20, "memory_available_mb": vm.available // 2**20,
            "memory_used_percent": vm.percent, "cpu_count": psutil.cpu_count(),
            "cpu_percent": psutil.cpu_percent(interval=0.2), "load_average": load}


def build_server(app: web.Application) -> Any:
    """The SDK server with every tool bound to this gateway's state."""
    server: Any = MCPServer(
        "turnout",
        # The SDK's own info lines are not structured and say nothing a user needs.
        log_level="WARNING",
        instructions=(
            "turnout is the local gateway serving this conversation: local models and the user's cloud "
            "providers behind one base URL. Use endpoint_set when the user asks to change model or provider "
            "(\"use my local one\", \"try Gemini Flash for this\"), endpoint_recommend when they ask which is "
            "best, and the status tools to answer questions about speed, cost, memory and workers."),
    )

    def tool(fn: Callable[..., Awaitable[Any]], description: str, *, read_only: bool = True,
             name: str | None = None) -> None:
        server.add_tool(fn, name=name or fn.__name__, description=description,
                        annotations=ToolAnnotations(read_only_hint=read_only))

    async def endpoint_list() -> dict[str, Any]:
        router = _router(app)
        cfg = router.config
        ready = _ready_models(app)
        items = []
        for c in choices(app, cfg):
            d: dict[str, Any] = {"name": c.label, "kind": "local" if c.local else "cloud", "provider": c.provider,
                                 "context_window": c.window or None}
            if c.local:
                d["ready"] = c.label in ready
            else:
                d["price_usd_per_mtok"] = {"input": c.input_price, "output": c.output_price}
            items.append(d)
        aliases = dict(cfg.routing.aliases)
        return {"endpoints": items, "aliases": aliases, "default": cfg.routing.default or None,
                "global_switch": _router(app).global_override,
                "summary": f"{len(items)} endpoints: " + ", ".join(i["name"] for i in items)}

    async def endpoint_status(ctx: Context, endpoint: Annotated[str, Field(
            description="an endpoint or model name (fuzzy); empty: all, plus this session's route")] = "",
            session_id: SessionArg = "") -> dict[str, Any]:
        router = _router(app)
        cfg = router.config
        options = choices(app, cfg)
        if endpoint:
            try:
                picked = match_target(endpoint, options, cfg, _ready_models(app))
            except ValueError as e:
                raise ToolFailure(str(e)) from None
            labels = [t.label for t in resolve_target(cfg, picked or "", 1)] if picked else []
            options = [c for c in options if c.label in labels] or options
        ready = _ready_models(app)
        out = []
        for c in options:
            key = c.label if c.local else c.label.split("/", 1)[0]
            d: dict[str, Any] = {"name": c.label, "context_window": c.window or None,
                                 "telemetry": router.telemetry.endpoint_summary(key)}
            if c.local:
                d["ready"] = c.label in ready
                if c.label in app[BUS].model_failed:
                    d["parked"] = app[BUS].model_failed[c.label]
            else:
                ep = next(e for e in cfg.endpoints if e.name == key)
                kname = router.key_name(ep)
                d["key_set"] = bool(kname) and router.keys.has(kname)
            out.append(d)
        sid, how = _session_for(app, ctx, session_id)
        s = router.telemetry.sessions.get(sid) if sid else None
        session = {"id": sid or None, "found_by": how, "override": router.overrides.get(sid) if sid else None,
                   "last_endpoint": s.endpoint if s else None, "conversation_tokens": s.tokens if s else 0}
        return {"endpoints": out, "session": session}

    async def endpoint_set_tool(ctx: Context, target: Annotated[str, Field(
            description="where to send requests: an endpoint/model name from endpoint_list, fuzzy words such as "
                        "'gemini flash' or 'gpt 4.1', 'local' for the user's local model, or 'default' to go back "
                        "to the configured routing")],
            scope: Annotated[Literal["session", "global"], Field(
                description="'session' (default): only this conversation, from its next request; 'global': every "
                            "request of every client")] = "session",
            session_id: SessionArg = "") -> dict[str, Any]:
        return await endpoint_set(app, ctx, target, scope, session_id)

    async def endpoint_recommend_tool(ctx: Context, session_id: SessionArg = "", apply: Annotated[bool, Field(
            description="also switch this session to the first choice")] = False) -> dict[str, Any]:
        return await endpoint_recommend(app, ctx, session_id, apply)

    async def models_list() -> dict[str, Any]:
        bus = app[BUS]
        reply = await _command(app, m.Status())
        status = {x.name: x for x in reply.models} if isinstance(reply, m.StatusReply) else {}
        ready = _ready_models(app)
        local = []
        for mc in bus.config.models:
            info = status.get(mc.name)
            local.append({"name": mc.name, "backend": mc.backend, "aliases": mc.aliases,
                          "context_window": app[BUS].context_window(mc) or None, "loaded": mc.name in ready,
                          "workers_desired": info.desired if info else None,
                          "workers_running": info.running if info else None,
                          "note": (info.reason if info else "") or bus.model_failed.get(mc.name, "")})
        cloud = [{"name": f"{ep.name}/{em.name}", "provider": ep.provider, "context_window": em.context_window or None,
                  "price_usd_per_mtok": {"input": em.input_price, "output": em.output_price}}
                 for ep in bus.config.endpoints for em in ep.models]
        return {"local": local, "cloud": cloud}

    async def model_load(model: LocalModelArg,
                         wait_s: Annotated[float, Field(description="seconds to wait until it is ready (0: return "
                                                                     "at once)", ge=0, le=600)] = 60.0) -> dict[str, Any]:
        mc = _local_model(app[BUS].config, model)
        msg = _reply_text(await _command(app, m.LoadModel(mc.name, unpark=True)))
        ready = await _wait_ready(app, mc.name, wait_s) if wait_s else mc.name in _ready_models(app)
        return {"model": mc.name, "supervisor": msg, "ready": ready,
                "summary": f"{mc.name} is ready" if ready else f"{mc.name}: {msg}; not ready yet"}

    async def model_unload(model: LocalModelArg) -> dict[str, Any]:
        mc = _local_model(app[BUS].config, model)
        msg = _reply_text(await _command(app, m.EvictModel(mc.name)))
        return {"model": mc.name, "summary": msg + " (requests in flight finish first; `model_load` brings it back)"}

    async def workers_status() -> dict[str, Any]:
        reply = await _command(app, m.ListWorkers())
        if not isinstance(reply, m.WorkersReply):
            raise ToolFailure("unexpected reply from the supervisor")
        return {"workers": _workers(app, reply)}

    async def workers_scale(model: Annotated[str, Field(description="a local model name, or a backend name to scale "
                                                                     "all its models")],
                            workers: Annotated[int, Field(description="how many workers to run (0 stops them; "
                                                                      "scaling down drains first)", ge=0, le=64)]
                            ) -> dict[str, Any]:
        msg = _reply_text(await _command(app, m.ScaleModel(model, workers)))
        return {"target": model, "workers": workers, "summary": msg}

    async def system_status() -> dict[str, Any]:
        sysinfo = await asyncio.get_running_loop().run_in_executor(None, _system)
        reply = await _command(app, m.Status())
        workers = []
        if isinstance(reply, m.StatusReply):
            sysinfo["memory_pressure"] = reply.pressure
            for w in reply.workers:
                d = {"id": w.id, "model": w.model, "state": w.state, "pid": w.pid,
                     "rss_mb": round(w.rss_bytes / 2**20, 1)}
                with contextlib.suppress(psutil.Error):
                    if w.pid:  # measured now, not the last heartbeat's figure
                        d["rss_mb"] = round(psutil.Process(w.pid).memory_info().rss / 2**20, 1)
                workers.append(d)
            for role, pid in (("supervisor", reply.supervisor_pid), ("gateway", reply.gateway_pid or os.getpid())):
                with contextlib.suppress(psutil.Error):
                    if pid:
                        workers.append({"id": role, "pid": pid,
                                        "rss_mb": round(psutil.Process(pid).memory_info().rss / 2**20, 1)})
        return {"system": sysinfo, "processes": workers}

    async def keys_status() -> dict[str, Any]:
        router = _router(app)
        out = []
        for ep in router.config.endpoints:
            kname = router.key_name(ep)
            needed = bool(kname) and ep.provider != "openai_compatible"
            has = bool(kname) and router.keys.has(kname)
            out.append({"endpoint": ep.name, "provider": ep.provider, "key_name": kname or None, "key_set": has,
                        "how_to_set": f"turnout keys set {kname}" if kname and not has else None,
                        "required": needed})
        return {"keys": out, "note": "key values are never shown"}

    async def usage(session_id: Annotated[str, Field(description="only this session (empty: every endpoint and "
                                                                 "session)")] = "") -> dict[str, Any]:
        led = _router(app).telemetry.usage
        sessions = led.sessions if not session_id else {session_id: led.sessions.get(session_id, {})}
        return {"since_gateway_start": True, "total": led.total().as_dict(),
                "endpoints": {k: v.as_dict() for k, v in led.endpoints.items()},
                "sessions": {sid: {k: v.as_dict() for k, v in per.items()} for sid, per in sessions.items()}}

    tool(endpoint_list, "List every endpoint this gateway can route to (local models and cloud endpoint/model "
                        "names) with context windows and prices, the routing aliases and default.")
    tool(endpoint_status, "Measured state of endpoints: p50 time to first token, tokens/s, error rate, requests, "
                          "whether a key is set or a local worker is ready; and this session's route and size.")
    tool(endpoint_set_tool, "Switch which endpoint serves requests. Use it whenever the user asks to change model "
                            "or provider: 'use my local one' -> target='local'; 'try Gemini Flash for this' -> "
                            "target='gemini flash'; 'go back to normal' -> target='default'. scope='session' (default) "
                            "changes only this conversation from its next request; scope='global' changes every "
                            "client's requests. Names are matched forgivingly.", read_only=False, name="endpoint_set")
    tool(endpoint_recommend_tool, "Recommend the best endpoint for this conversation now, ranked, with one-sentence "
                                  "reasons: its size in tokens against each context window, measured TTFT and "
                                  "tokens/s, error rate, price and availability. apply=true switches to the first "
                                  "choice.", read_only=False, name="endpoint_recommend")
    tool(models_list, "Local models (loaded or not, workers desired/running, context window) and cloud models "
                      "with prices.")
    tool(model_load, "Load a local model now (starts a worker; un-parks a model that crashed) and wait until it "
                     "is ready.", read_only=False)
    tool(model_unload, "Unload a local model: drain and stop its workers to free memory.", read_only=False)
    tool(workers_status, "The worker processes: model, state, pid, RSS, requests in flight, restarts, idle time.")
    tool(workers_scale, "Run N workers of a local model (or of every model of a backend); scaling down drains.",
         read_only=False)
    tool(system_status, "Machine memory (total, available, pressure), CPU use and load average, and the RSS of "
                        "each turnout process (supervisor, gateway, every worker).")
    tool(keys_status, "Which endpoints have an API key in the keyring and how to set a missing one (never a key "
                      "value).")
    tool(usage, "Tokens (input, output, cache reads) and cost in USD per endpoint and per session since the gateway "
                "started.")
    _register_media_tools(app, tool)
    return server


def _register_media_tools(app: web.Application, tool: Callable[..., None]) -> None:
    """ocr_image, transcribe_audio, speak_text, upscale_image from gateway/media.py,
    when that module provides them."""
    from gateway import media

    async def call(fn: Callable[..., Awaitable[str]], *args: Any) -> str:
        try:
            return await fn(app[BUS], *args)
        except ApiError as e:
            raise ToolFailure(e.message) from None

    if hasattr(media, "ocr_image"):
        async def ocr_image(image: FileArg, model: ModelArg = "") -> str:
            return await call(media.ocr_image, image, model)
        tool(ocr_image, "Read the text in an image (OCR) with the local OCR worker.")
    if hasattr(media, "transcribe_audio"):
        async def transcribe_audio(audio: FileArg, language: Annotated[str, Field(
                description="ISO code such as 'en' (empty: detect)")] = "", model: ModelArg = "") -> str:
            return await call(media.transcribe_audio, audio, language, model)
        tool(transcribe_audio, "Transcribe speech in an audio file to text with the local speech-to-text worker.")
    if hasattr(media, "speak_text"):
        async def speak_text(text: str, output_path: OutArg = "", voice: str = "",
                             speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0, model: ModelArg = "") -> str:
            return await call(media.speak_text, text, output_path, voice, speed, model)
        tool(speak_text, "Speak text into a WAV file with the local text-to-speech worker; returns the file's path.",
             read_only=False)
    if hasattr(media, "upscale_image"):
        async def upscale_image(image: FileArg, scale: Literal[2, 4] = 2, output_path: OutArg = "",
                                model: ModelArg = "") -> str:
            return await call(media.upscale_image, image, scale, output_path, model)
        tool(upscale_image, "Upscale an image 2x or 4x with the local upscale worker; returns the PNG's path.",
             read_only=False)


# --------------------------------------------------------- ASGI on aiohttp


def asgi_handler(asgi_app: Callable[[dict[str, Any], Any, Any], Awaitable[None]]) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler running an ASGI 3 HTTP app for one request.

    The body is read whole first (MCP messages are small, and aiohttp's
    ``client_max_size`` bounds it); after it, ``receive`` blocks until the handler
    is cancelled (the client went away), which is what an ASGI app expects of a
    connection that has nothing more to say. The response streams: SSE works."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        sent_body = False
        resp: web.StreamResponse | None = None
        forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await forever  # cancelled with the handler
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal resp
            if msg["type"] == "http.response.start":
                resp = web.StreamResponse(status=msg["status"])
                for k, v in msg.get("headers", []):
                    resp.headers.add(k.decode("latin-1"), v.decode("latin-1"))
                await resp.prepare(request)
            elif msg["type"] == "http.response.body":
                assert resp is not None, "ASGI app sent a body before its start"
                chunk = msg.get("body", b"")
                if chunk:
                    await resp.write(chunk)
                if not msg.get("more_body", False):
                    await resp.write_eof()

        peer = request.transport.get_extra_info("peername") if request.transport else None
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": f"{request.version.major}.{request.version.minor}",
            "method": request.method, "scheme": request.scheme, "path": request.path,
            "raw_path": request.raw_path.split("?", 1)[0].encode(), "root_path": "",
            "query_string": request.query_string.encode(),
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "client": tuple(peer[:2]) if peer else None, "server": tuple(sock[:2]) if sock else None,
            "state": {},
        }
        try:
            await asgi_app(scope, receive, send)
        finally:
            if not forever.done():
                forever.cancel()
        if resp is None:
            raise ApiError(500, "the MCP server sent no response")
        return resp

    return handle


def register(app: web.Application) -> None:
    """Serve the MCP server at ``/mcp`` on ``app`` (if ``[mcp] enabled``).

    The SDK's session manager must enter and leave its task group in one task, so
    it runs in a task of its own for the app's life. Stateless and JSON answers:
    nothing is kept between requests, so a restarted gateway serves a client that
    connected to the previous one without a new handshake."""
    cfg = app[BUS].config
    if not cfg.mcp.enabled:
        return
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    server = build_server(app)
    manager = StreamableHTTPSessionManager(app=server._lowlevel_server, json_response=True, stateless=True,
                                           max_request_body_size=4 * 2**20)
    state = McpState(server, manager)
    app[MCP] = state

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        started = asyncio.Event()
        stop = asyncio.Event()

        async def run() -> None:
            async with manager.run():
                started.set()
                await stop.wait()

        task = asyncio.create_task(run())
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()  # raises what failed
        yield
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)

    app.cleanup_ctx.append(lifecycle)
    handler = asgi_handler(manager.handle_request)
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, "/mcp", handler)


# ------------------------------------------------------------ stdio: turnout mcp


async def serve_stdio(url: str, token: str) -> None:
    """An MCP server on stdin/stdout whose tools are the gateway's: every list and
    call is forwarded to ``url``/mcp with the token (and, if Claude Code spawned us,
    its session id), so stdio clients get exactly the same tools."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.exceptions import MCPError
    from mcp_types import INTERNAL_ERROR, CallToolResult, ErrorData, ListToolsResult, TextContent

    headers = {"Authorization": f"Bearer {token}"}
    sid = os.environ.get("CLAUDE_CODE_SESSION_ID")
    if sid:
        headers[SESSION_HEADER] = sid

    @contextlib.asynccontextmanager
    async def remote() -> AsyncIterator[Any]:
        # One connection per forwarded request, opened and closed in the handler's
        # own task (the SDK's task groups must be left where they were entered);
        # a handshake on localhost costs a few ms, and tool calls are rare. It
        # also makes a restarted gateway a non-event.
        async with create_mcp_http_client(headers=headers, timeout=httpx2.Timeout(30.0, read=600.0)) as http:
            async with Client(streamable_http_client(url + "/mcp", http_client=http)) as c:
                yield c

    def unreachable(e: BaseException) -> str:
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        return (f"turnout is not reachable at {url} ({type(e).__name__}: {e}); start it with `turnout up` "
                f"or set TURNOUT_URL")

    async def on_list_tools(ctx: Any, params: Any) -> ListToolsResult:
        try:
            async with remote() as c:
                return ListToolsResult(tools=list((await c.list_tools()).tools))
        except Exception as e:
            raise MCPError.from_error_data(ErrorData(code=INTERNAL_ERROR, message=unreachable(e))) from None

    async def on_call_tool(ctx: Any, params: Any) -> CallToolResult:
        meta = dict(params.meta) if getattr(params, "meta", None) else None
        try:
            async with remote() as c:
                res: CallToolResult = await c.call_tool(params.name, params.arguments or {}, meta=meta)
                return res
        except Exception as e:
            return CallToolResult(content=[TextContent(type="text", text=unreachable(e))], is_error=True)

    server: Any = Server("turnout", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def cmd_mcp(args: Any) -> int:
    from gateway.auth import load_or_create_token

    try:
        token = load_or_create_token()
        url = gateway_url(args.port, args.config)
    except Exception as e:  # a bad config or keyring: say it on stderr (stdout is the protocol)
        print(f"turnout mcp: {e}", file=sys.stderr)
        return 2
    import anyio

    anyio.run(serve_stdio, url, token)
    return 0


def register_cli(sub: Any) -> None:
    p = sub.add_parser("mcp", help="the MCP server over stdio (forwards to the running gateway's /mcp)")
    p.add_argument("--config", help="config file, to find the gateway's port")
    p.add_argument("--port", type=int, help="the gateway's port (default: the config's, else 8765)")
    p.set_defaults(func=cmd_mcp)
    from gateway import claude_setup

    claude_setup.register_cli(sub)
