"""``endpoint_recommend``: which endpoint should serve a conversation next.

Pure policy (STYLE.md 8): :func:`recommend` is a function of a snapshot — the
session's size in tokens and, for each endpoint, its context window, measured time
to first token and tokens/s, error rate, price and availability — and returns a
ranked list with one sentence of reasons each, e.g.::

    you're at 47K tokens; the local model's window is 32K
    gemini/gemini-2.0-flash: 1M window, p50 TTFT 0.6 s, 180 tok/s, $0.10/$0.40 per Mtok

The gateway builds the snapshot (gateway/mcp/switching.py) from the router's telemetry
and the supervisor's worker table; nothing here does I/O.

Ranking, in order:

1. usable before not: an endpoint that is unavailable (no key, no worker that can
   start, parked after crashes) or whose window cannot hold the conversation plus
   the answer goes last, with the reason;
2. among usable ones, the lowest *cost of the next turn* in seconds: expected time
   (TTFT + answer tokens / tokens per second) inflated by the error rate (a failed
   try costs a retry), plus the price of the turn converted at ``usd_per_second``,
   plus a penalty when the conversation already fills most of the window (Claude
   Code would compact soon).

Unmeasured figures get neutral defaults (a local model: 1 s TTFT, 20 tok/s; a cloud
one: 1 s, 60 tok/s) and the reason says "not measured yet", so a fresh endpoint is
neither favoured nor buried.
"""

from __future__ import annotations

from dataclasses import dataclass

# Assumed answer size of the next turn, in tokens (Claude Code's turns are mostly
# tool calls and short texts).
DEFAULT_OUTPUT_TOKENS = 800
# How many dollars a second of waiting is worth: 1 cent = 1 s by default.
DEFAULT_USD_PER_SECOND = 0.01
# Past this share of its window, an endpoint is penalised: compaction is near.
TIGHT_FILL = 0.8


@dataclass(frozen=True)
class Candidate:
    """One endpoint (a cloud endpoint's model, or a local model) as measured now.

    ``label``: the name ``endpoint_set`` accepts (``endpoint/model`` or the local
    model's name). ``window``: context window in tokens (0: unknown). ``ttft_s``:
    p50 time to first token; ``tokens_per_s``: p50 generation speed (None: not
    measured). ``error_rate``: 0..1 over recent requests. Prices: USD per million
    tokens (0: free or unknown). ``available`` False with ``why_unavailable``: it
    cannot serve now (no key, parked worker...)."""

    label: str
    local: bool
    window: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    error_rate: float = 0.0
    requests: int = 0
    input_price: float = 0.0
    output_price: float = 0.0
    available: bool = True
    why_unavailable: str = ""
    current: bool = False


@dataclass(frozen=True)
class Ranked:
    """A candidate's place: ``usable`` (it can serve this conversation now),
    ``cost_s`` (lower is better; meaningful among usable ones), ``reason``."""

    label: str
    usable: bool
    cost_s: float
    reason: str
    current: bool = False


@dataclass(frozen=True)
class Recommendation:
    """The ranked candidates, best first, and a one-sentence ``summary``."""

    session_tokens: int
    ranked: list[Ranked]
    summary: str

    @property
    def best(self) -> Ranked | None:
        return self.ranked[0] if self.ranked and self.ranked[0].usable else None


def fmt_tokens(n: int) -> str:
    """47_300 -> "47K", 32_768 -> "32K", 1_048_576 -> "1M" (floored: a window is
    never shown bigger than it is)."""
    if n >= 1_000_000:
        return f"{int(n / 100_000) / 10:g}M"
    if n >= 1000:
        return f"{n // 1000}K"
    return str(n)


def _who(c: Candidate) -> str:
    return f"the local model {c.label}" if c.local else c.label


def _defaults(c: Candidate) -> tuple[float, float]:
    ttft = c.ttft_s if c.ttft_s is not None else 1.0
    tps = c.tokens_per_s if c.tokens_per_s else (20.0 if c.local else 60.0)
    return ttft, tps


def _measured(c: Candidate) -> str:
    parts = []
    if c.ttft_s is not None:
        parts.append(f"p50 TTFT {c.ttft_s:.1f} s")
    if c.tokens_per_s:
        parts.append(f"{c.tokens_per_s:.0f} tok/s")
    if not parts:
        parts.append("speed not measured yet")
    if c.requests and c.error_rate > 0:
        parts.append(f"{c.error_rate:.0%} errors")
    return ", ".join(parts)


def _price(c: Candidate) -> str:
    if c.local:
        return "free"
    if c.input_price or c.output_price:
        return f"${c.input_price:g}/${c.output_price:g} per Mtok"
    return "price unknown"


def recommend(session_tokens: int, candidates: list[Candidate], *,
              output_tokens: int = DEFAULT_OUTPUT_TOKENS,
              usd_per_second: float = DEFAULT_USD_PER_SECOND) -> Recommendation:
    """Rank ``candidates`` for a conversation of ``session_tokens`` tokens (see the
    module docstring). Ties keep the candidates' order, so the caller's order (the
    configured routing order) breaks them."""
    need = session_tokens + output_tokens
    scored: list[tuple[int, float, int, Ranked]] = []
    for i, c in enumerate(candidates):
        window = f"{fmt_tokens(c.window)} window" if c.window else "window unknown"
        if not c.available:
            r = Ranked(c.label, False, float("inf"), f"{c.label}: unavailable ({c.why_unavailable or 'not serving'})",
                       c.current)
            scored.append((2, r.cost_s, i, r))
            continue
        if c.window and need > c.window:
            r = Ranked(c.label, False, float("inf"),
                       f"you're at {fmt_tokens(session_tokens)} tokens; {_who(c)}'s window is {fmt_tokens(c.window)}",
                       c.current)
            scored.append((1, r.cost_s, i, r))
            continue
        ttft, tps = _defaults(c)
        turn_s = ttft + output_tokens / tps
        # A failed try is retried (or falls back): expected tries = 1 / (1 - p).
        p = min(max(c.error_rate, 0.0), 0.9)
        turn_s /= 1.0 - p
        usd = (session_tokens * c.input_price + output_tokens * c.output_price) / 1e6
        cost = turn_s + usd / usd_per_second
        notes = [window, _measured(c), _price(c)]
        if c.window and need > TIGHT_FILL * c.window:
            cost += turn_s  # compaction soon: as bad as a turn twice as slow
            notes.append(f"{need * 100 // c.window}% full: Claude Code will compact soon")
        if usd >= 0.0005:
            notes.append(f"~${usd:.3f} per turn at this size")
        r = Ranked(c.label, True, round(cost, 3), f"{c.label}: " + ", ".join(notes), c.current)
        scored.append((0, cost, i, r))
    scored.sort(key=lambda x: (x[0], x[1], x[2]))
    ranked = [x[3] for x in scored]
    summary = _summary(session_tokens, ranked)
    return Recommendation(session_tokens, ranked, summary)


def _summary(tokens: int, ranked: list[Ranked]) -> str:
    at = f"You're at {fmt_tokens(tokens)} tokens"
    if not ranked:
        return f"{at}; no endpoint is configured."
    best = ranked[0]
    if not best.usable:
        return f"{at}; no endpoint can serve this conversation now: {best.reason}."
    current = next((r for r in ranked if r.current), None)
    if current is not None and current.label == best.label:
        return f"{at}; stay on {best.label}: it is the best fit."
    if current is not None and not current.usable:
        return f"{at}; switch to {best.label}: {current.reason}."
    return f"{at}; {best.label} is the best fit."
