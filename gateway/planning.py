"""Choosing where a request goes (pure: a function of the config, the request and
the session's override): an ordered list of :class:`Target` s. The order, and what
is skipped, is described in gateway/routing.py, which runs the plan."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from turnout.protocol.chat import ChatRequest, ImagePart, ToolResultPart, all_text
from turnout.protocol.config import Config, EndpointConfig, ModelConfig

FAMILIES = ("opus", "sonnet", "haiku")
_MAX_DEPTH = 4


@dataclass(frozen=True)
class Target:
    """One place a request can go. ``model``: the name the upstream knows."""

    label: str
    model: str
    endpoint: EndpointConfig | None = None
    local: ModelConfig | None = None
    window: int = 0
    vision: bool = True


def _ep_target(ep: EndpointConfig, model: str) -> Target:
    em = next((x for x in ep.models if x.name == model), None)
    return Target(f"{ep.name}/{model}", model, endpoint=ep,
                  window=em.context_window if em else 0, vision=em.vision if em else True)


def _local_target(mc: ModelConfig) -> Target:
    return Target(mc.name, mc.name, local=mc, window=mc.context_window)


def _as_list(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _alias(cfg: Config, name: str) -> list[str] | None:
    aliases = cfg.routing.aliases
    if name in aliases:
        return _as_list(aliases[name])
    for k, v in aliases.items():
        if _is_glob(k) and fnmatch.fnmatchcase(name, k):
            return _as_list(v)
    low = name.lower()
    for fam in FAMILIES:
        if fam in aliases and low.startswith("claude") and fam in low:
            return _as_list(aliases[fam])
    return None


def resolve_target(cfg: Config, s: str, depth: int = 0) -> list[Target]:
    """The targets a name stands for (empty: nothing serves it)."""
    if depth > _MAX_DEPTH:
        return []
    alias = _alias(cfg, s) if depth == 0 or s in cfg.routing.aliases else None
    if alias is not None:
        out: list[Target] = []
        for a in alias:
            out.extend(resolve_target(cfg, a, depth + 1) if a != s else _direct(cfg, s))
        return out
    return _direct(cfg, s)


def _direct(cfg: Config, s: str) -> list[Target]:
    if "/" in s:
        head, model = s.split("/", 1)
        for ep in cfg.endpoints:
            if ep.name == head:
                return [_ep_target(ep, model)]
    mc = cfg.resolve_model(s)
    if mc is not None:
        return [_local_target(mc)]
    for ep in cfg.endpoints:
        if any(x.name == s for x in ep.models):
            return [_ep_target(ep, s)]
    return []


def estimate_tokens(req: ChatRequest) -> int:
    """A quick size estimate (4 characters a token, ~1.6k per image): good enough to
    compare with a context window; a client's count only for endpoints with no
    counting call of their own (OpenAI and compatible servers)."""
    images = sum(1 for msg in req.messages for p in msg.content
                 if isinstance(p, ImagePart) or (isinstance(p, ToolResultPart)
                                                  and any(isinstance(c, ImagePart) for c in p.content)))
    return len(all_text(req)) // 4 + images * 1600


def has_images(req: ChatRequest) -> bool:
    for msg in req.messages:
        for p in msg.content:
            if isinstance(p, ImagePart):
                return True
            if isinstance(p, ToolResultPart) and any(isinstance(c, ImagePart) for c in p.content):
                return True
    return False


def is_background(req: ChatRequest) -> bool:
    """Claude Code's small-model work (titles, topic checks, summaries): a haiku
    model id, or a short answer with no tools and no thinking."""
    if "haiku" in req.model.lower():
        return True
    thinking = req.thinking is not None and req.thinking.type != "disabled"
    return not req.tools and not thinking and req.max_tokens <= 1024


def _rule_matches(when: str, req: ChatRequest, tokens: int, first: Target | None) -> bool:
    if when == "background":
        return is_background(req)
    if when == "thinking":
        return req.thinking is not None and req.thinking.type != "disabled"
    if when == "images":
        return has_images(req)
    if when == "long_context":
        return first is not None and first.window > 0 and tokens > first.window
    return False


def plan(cfg: Config, req: ChatRequest, override: str | None = None) -> list[Target]:
    """The ordered targets for ``req`` (see the module docstring)."""
    tokens = estimate_tokens(req)
    named = resolve_target(cfg, req.model)
    if not named and cfg.routing.default:
        for d in _as_list(cfg.routing.default):
            named.extend(resolve_target(cfg, d, 1))
    chosen: list[Target] = []
    if override:
        chosen.extend(resolve_target(cfg, override, 1))
    for rule in cfg.routing.rules:
        if rule.models and not any(fnmatch.fnmatchcase(req.model, g) for g in rule.models):
            continue
        if _rule_matches(rule.when, req, tokens, named[0] if named else None):
            for name in _as_list(rule.to):
                chosen.extend(resolve_target(cfg, name, 1))
            break
    chosen.extend(named)
    for f in cfg.routing.fallback:
        chosen.extend(resolve_target(cfg, f, 1))
    images = has_images(req)
    out: list[Target] = []
    seen: set[str] = set()
    for t in chosen:
        if t.label in seen:
            continue
        seen.add(t.label)
        if t.window and tokens > t.window:
            continue
        if images and not t.vision:
            continue
        out.append(t)
    if not out and chosen:
        # Nothing is big enough or can see: let the first one answer (its own
        # "prompt is too long" is clearer than a 404).
        out.append(chosen[0])
    return out
