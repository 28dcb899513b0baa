"""Which session an MCP call is about, and the tools that switch or recommend its
endpoint (``endpoint_set``, ``endpoint_recommend``)."""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from aiohttp import web
from mcp.server.mcpserver.exceptions import ToolError

from turnout.gateway import recommend as rec
from turnout.gateway.errors import ApiError
from turnout.gateway.mcp.targets import Choice, choices, match_target
from turnout.gateway.planning import resolve_target
from turnout.gateway.routing import BUS, ROUTER, Router

log = structlog.get_logger()

SESSION_HEADER = "X-Claude-Code-Session-Id"
TOOL_USE_META = "claudecode/toolUseId"



class ToolFailure(ToolError):
    """A tool that cannot do what was asked; the message says what to do (the
    client sees it as the tool's error result)."""


def router_of(app: web.Application) -> Router:
    r = app.get(ROUTER)
    if r is None:
        raise ToolFailure("routing is not set up in this gateway")
    return r


def session_for(app: web.Application, ctx: Any, explicit: str) -> tuple[str, str]:
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


def current_label(router: Router, sid: str) -> str:
    if not sid:
        return ""
    ov = router.overrides.get(sid)
    if ov:
        ts = resolve_target(router.config, ov, 1)
        return ts[0].label if ts else ov
    s = router.telemetry.sessions.get(sid)
    return s.endpoint if s else ""


def ready_models(app: web.Application) -> set[str]:
    out: set[str] = set()
    for w in app[BUS].workers.values():
        if w.ready:
            out.update(w.models)
    return out


def set_global(app: web.Application, target: str | None) -> None:
    """Route every session that has no choice of its own to ``target`` (None: back
    to the configuration)."""
    router_of(app).set_global(target)


def _window_of(cands: list[Choice], label: str) -> int:
    return next((c.window for c in cands if c.label == label), 0)


async def endpoint_set(app: web.Application, ctx: Any, target: str, scope: str, session_id: str) -> dict[str, Any]:
    router = router_of(app)
    cfg = router.config
    options = choices(app, cfg)
    try:
        name = match_target(target, options, cfg, ready_models(app))
    except ValueError as e:
        raise ToolFailure(str(e)) from None
    if scope == "global":
        set_global(app, name)
        log.info("endpoint_set", scope="global", target=name)
        if name is None:
            return {"scope": "global", "target": None,
                    "summary": "Every request routes by the configuration again (global switch cleared)."}
        labels = [t.label for t in resolve_target(cfg, name, 1)]
        return {"scope": "global", "target": name, "resolves_to": labels,
                "summary": f"Every request now goes to {labels[0]} (sessions with their own choice keep it; "
                           f"background requests follow the routing rules)."}
    sid, how = session_for(app, ctx, session_id)
    if not sid:
        raise ToolFailure(f"cannot tell which session to switch: {how}. Send a request first, pass session_id, "
                          f"or use scope='global'")
    before = current_label(router, sid)
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
    router = router_of(app)
    sid, how = session_for(app, ctx, session_id)
    s = router.telemetry.sessions.get(sid) if sid else None
    tokens = s.tokens if s else 0
    current = current_label(router, sid)
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
