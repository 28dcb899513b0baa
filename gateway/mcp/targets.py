"""The names ``endpoint_set`` routes to, and how a person's words pick one."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from aiohttp import web

from turnout.gateway.appkeys import BUS
from turnout.gateway.planning import resolve_target
from turnout.protocol.config import NON_CHAT_BACKENDS, Config

_CLEAR_WORDS = {"default", "auto", "automatic", "reset", "clear", "none", "off", "unset", "normal"}
_LOCAL_WORDS = {"local", "locally", "offline", "on-device", "ondevice", "mine", "own", "laptop", "machine"}



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
