"""The MCP server's tools, built on the SDK's ``MCPServer`` for one gateway app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
import psutil
from aiohttp import web
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from turnout.gateway.appkeys import BUS
from turnout.gateway.errors import ApiError
from turnout.gateway.mcp.switching import (
    ToolFailure,
    endpoint_recommend,
    endpoint_set,
    ready_models,
    router_of,
    session_for,
)
from turnout.gateway.mcp.targets import choices, match_target
from turnout.gateway.planning import resolve_target
from turnout.protocol import messages as m
from turnout.protocol.config import Config, ModelConfig

# Argument types, at module level: the SDK resolves the tools' (string) annotations
# against the module's globals to build each JSON schema.
SessionArg = Annotated[str, Field(description="Claude Code session id; leave empty: the calling conversation is "
                                              "found automatically")]
FileArg = Annotated[str, Field(description="a file path, or the content as base64 (a data: URL too)")]
OutArg = Annotated[str, Field(description="where to write the result (empty: a new temporary file)")]
ModelArg = Annotated[str, Field(description="which configured model (empty: the first of its kind)")]
LocalModelArg = Annotated[str, Field(description="a local model name (see models_list)")]


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
        if model in ready_models(app):
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
             name: str | None = None, structured: bool | None = None) -> None:
        # structured=False: a text answer goes to the model as text only (a str is
        # otherwise also sent as {"result": ...}, which Claude Code shows as JSON).
        server.add_tool(fn, name=name or fn.__name__, description=description,
                        annotations=ToolAnnotations(read_only_hint=read_only), structured_output=structured)

    async def endpoint_list() -> dict[str, Any]:
        router = router_of(app)
        cfg = router.config
        ready = ready_models(app)
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
                "global_switch": router_of(app).global_override,
                "summary": f"{len(items)} endpoints: " + ", ".join(i["name"] for i in items)}

    async def endpoint_status(ctx: Context, endpoint: Annotated[str, Field(
            description="an endpoint or model name (fuzzy); empty: all, plus this session's route")] = "",
            session_id: SessionArg = "") -> dict[str, Any]:
        router = router_of(app)
        cfg = router.config
        options = choices(app, cfg)
        if endpoint:
            try:
                picked = match_target(endpoint, options, cfg, ready_models(app))
            except ValueError as e:
                raise ToolFailure(str(e)) from None
            labels = [t.label for t in resolve_target(cfg, picked or "", 1)] if picked else []
            options = [c for c in options if c.label in labels] or options
        ready = ready_models(app)
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
        sid, how = session_for(app, ctx, session_id)
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
        ready = ready_models(app)
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
        ready = await _wait_ready(app, mc.name, wait_s) if wait_s else mc.name in ready_models(app)
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
        router = router_of(app)
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
        led = router_of(app).telemetry.usage
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
    if any(mc.backend == "browser" for mc in app[BUS].config.models):
        from turnout.gateway.mcp.browser import register_browser_tools

        register_browser_tools(app, tool)
    return server


def _register_media_tools(app: web.Application, tool: Callable[..., None]) -> None:
    """ocr_image, transcribe_audio, speak_text, upscale_image from gateway/media/,
    when that module provides them."""
    from turnout.gateway import media

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
