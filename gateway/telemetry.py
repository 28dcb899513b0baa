"""Rolling measurements per endpoint and per session, for ``/admin/endpoints``,
routing and the recommendation tool (``endpoint_recommend``) of the MCP server.
Always on: they do not depend on ``[mcp] enabled``.

Per endpoint (the last ``WINDOW`` requests): time to first token, generation
speed in tokens/s, error rate, requests and cancellations. Per session (Claude
Code's session id): the conversation's size in tokens as last seen, the endpoint
that served it and any override. The usage ledger: tokens and cost per endpoint
and per session since the gateway started. The tool_use index: which session
produced each ``mcp__*`` tool call (how an MCP tool finds its conversation).

The router measures cloud endpoints itself; :func:`observe` wraps every answer's
stream to keep the ledger, the index and local models' speed. Bookkeeping only:
no I/O, no keys.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from turnout.gateway.metrics import LOCAL, cloud_labels
from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest
from turnout.protocol.config import Config, EndpointConfig

if TYPE_CHECKING:
    from turnout.gateway.metrics import Metrics
    from turnout.gateway.routing import Source

# What counts as the first token, for the TTFT metric (Started comes before a
# local model's prefill; Ping is a keep-alive).
_TOKENS = (m.TextDelta, m.ThinkingDelta, m.ToolCallStart, m.ToolArgsDelta, m.JobOutput)

WINDOW = 100
MAX_SESSIONS = 1000


@dataclass
class Sample:
    t: float
    ok: bool
    ttft_s: float | None
    tps: float | None
    cancelled: bool


@dataclass
class EndpointStats:
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=WINDOW))
    requests: int = 0
    errors: int = 0

    def add(self, s: Sample) -> None:
        self.samples.append(s)
        self.requests += 1
        if not s.ok and not s.cancelled:
            self.errors += 1

    def summary(self) -> dict[str, Any]:
        ttfts = [s.ttft_s for s in self.samples if s.ttft_s is not None]
        tps = [s.tps for s in self.samples if s.tps is not None]
        finished = [s for s in self.samples if not s.cancelled]
        return {
            "requests": self.requests,
            "window": len(self.samples),
            "ttft_ms_p50": round(statistics.median(ttfts) * 1000, 1) if ttfts else None,
            "ttft_ms_mean": round(statistics.fmean(ttfts) * 1000, 1) if ttfts else None,
            "tokens_per_s": round(statistics.median(tps), 1) if tps else None,
            "error_rate": round(sum(1 for s in finished if not s.ok) / len(finished), 3) if finished else 0.0,
            "cancelled": sum(1 for s in self.samples if s.cancelled),
        }


@dataclass
class SessionInfo:
    tokens: int = 0
    endpoint: str = ""
    model: str = ""
    updated: float = 0.0


class ToolUseIndex:
    """``tool_use`` id -> session id, for the last ``size`` MCP tool calls the
    gateway streamed (LRU: a call arrives within seconds of its tool_use)."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._d: OrderedDict[str, str] = OrderedDict()

    def add(self, tool_use_id: str, session_id: str) -> None:
        self._d[tool_use_id] = session_id
        self._d.move_to_end(tool_use_id)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def get(self, tool_use_id: str) -> str | None:
        return self._d.get(tool_use_id)


@dataclass
class Tally:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, u: Any, cost: float) -> None:
        self.requests += 1
        self.input_tokens += u.input_tokens
        self.output_tokens += u.output_tokens
        self.cache_read_input_tokens += u.cache_read_input_tokens
        self.cost_usd += cost

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens, "cost_usd": round(self.cost_usd, 6)}


@dataclass
class UsageLedger:
    """Tokens and cost since the gateway started, per endpoint label and per
    session (the last ``max_sessions``)."""

    max_sessions: int = 1000
    endpoints: dict[str, Tally] = field(default_factory=dict)
    sessions: OrderedDict[str, dict[str, Tally]] = field(default_factory=OrderedDict)

    def record(self, label: str, session_id: str, usage: Any, cost: float) -> None:
        self.endpoints.setdefault(label, Tally()).add(usage, cost)
        if session_id:
            per = self.sessions.pop(session_id, None) or {}
            per.setdefault(label, Tally()).add(usage, cost)
            self.sessions[session_id] = per
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)

    def total(self) -> Tally:
        """Every endpoint's tally added up."""
        out = Tally()
        for t in self.endpoints.values():
            out.requests += t.requests
            out.input_tokens += t.input_tokens
            out.output_tokens += t.output_tokens
            out.cache_read_input_tokens += t.cache_read_input_tokens
            out.cost_usd += t.cost_usd
        return out


class Telemetry:
    """Options:
    window: samples kept per endpoint; max_sessions: sessions remembered (LRU),
    in the session table and the usage ledger alike."""

    def __init__(self, window: int = WINDOW, max_sessions: int = MAX_SESSIONS) -> None:
        self.window = window
        self.max_sessions = max_sessions
        self.endpoints: dict[str, EndpointStats] = {}
        self.sessions: OrderedDict[str, SessionInfo] = OrderedDict()
        self.usage = UsageLedger(max_sessions=max_sessions)
        self.tool_uses = ToolUseIndex()

    def record(self, endpoint: str, *, ok: bool, ttft_s: float | None, output_tokens: int,
               gen_s: float, cancelled: bool = False) -> None:
        st = self.endpoints.get(endpoint)
        if st is None:
            st = self.endpoints[endpoint] = EndpointStats(deque(maxlen=self.window))
        # Speed after the first token: a fair figure for long and short answers alike.
        tps = output_tokens / gen_s if ok and output_tokens > 1 and gen_s > 0 else None
        st.add(Sample(time.time(), ok, ttft_s, tps, cancelled))

    def session(self, sid: str, *, tokens: int, endpoint: str, model: str) -> None:
        if not sid:
            return
        info = self.sessions.pop(sid, None) or SessionInfo()
        info.tokens, info.endpoint, info.model, info.updated = tokens, endpoint, model, time.time()
        self.sessions[sid] = info
        while len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)

    def endpoint_summary(self, endpoint: str) -> dict[str, Any]:
        st = self.endpoints.get(endpoint)
        return st.summary() if st is not None else EndpointStats().summary()


# --------------------------------------------------------- the stream observer


def _price(cfg: Config, ep: EndpointConfig, model: str) -> tuple[float, float]:
    em = next((x for x in ep.models if x.name == model), None)
    return (em.input_price, em.output_price) if em else (0.0, 0.0)


class Observed:
    """A :class:`~gateway.routing.Source` seen through: passes every batch on
    unchanged and notes MCP tool_use ids, usage and (local models) speed."""

    __slots__ = ("inner", "label", "local", "metrics", "prices", "req", "t_arrival", "t_first", "t_open", "t_token",
                 "target", "telemetry", "watch_tools")

    def __init__(self, inner: Source, telemetry: Telemetry, config: Config, req: ChatRequest,
                 metrics: Metrics | None = None, t_arrival: float = 0.0) -> None:
        self.inner = inner
        self.telemetry = telemetry
        self.req = req
        ep = getattr(inner, "ep", None)
        model = str(getattr(inner, "model", ""))
        self.local = ep is None
        self.label = model if ep is None else f"{ep.name}/{model}"
        # The metrics' (model, endpoint) labels: names from the config only.
        self.target = (model, LOCAL) if ep is None else cloud_labels(ep, model)
        self.metrics = metrics
        self.t_token = 0.0  # the first token's arrival (metrics only)
        self.prices = (0.0, 0.0) if ep is None else _price(config, ep, model)
        # Only a conversation that offers MCP tools can produce one of our calls.
        self.watch_tools = bool(req.session_id) and any(t.name.startswith("mcp__") for t in req.tools)
        self.t_open = time.perf_counter()
        self.t_arrival = t_arrival or self.t_open
        self.t_first = 0.0

    @property
    def done(self) -> bool:
        return self.inner.done

    @done.setter
    def done(self, value: bool) -> None:
        self.inner.done = value

    def cancel(self) -> None:
        self.inner.cancel()

    async def next_batch(self) -> list[m.StreamMsg]:
        batch = await self.inner.next_batch()
        if not self.t_first:
            self.t_first = time.perf_counter()
        if not self.t_token and self.metrics is not None:
            # Until the first token only: one or two batches of an answer.
            for msg in batch:
                if isinstance(msg, _TOKENS):
                    self.t_token = time.perf_counter()
                    break
        if self.watch_tools:
            for msg in batch:
                if type(msg) is m.ToolCallStart and msg.name.startswith("mcp__"):
                    self.telemetry.tool_uses.add(msg.id, self.req.session_id)
        last = batch[-1] if batch else None
        if type(last) is m.Done:
            self._finish(last)
        elif type(last) is m.Failed:
            if self.local:
                self.telemetry.record(self.label, ok=False, ttft_s=None, output_tokens=0, gen_s=0.0)
            if self.metrics is not None:
                self.metrics.failed(self.target, last.kind)
        return batch

    def _finish(self, done: m.Done) -> None:
        u = done.usage
        cost = (u.input_tokens * self.prices[0] + u.output_tokens * self.prices[1]) / 1e6
        self.telemetry.usage.record(self.label, self.req.session_id, u, cost)
        if self.local and done.stop_reason != "cancelled":
            # The router measures cloud endpoints itself; local ones are measured here.
            now = time.perf_counter()
            self.telemetry.record(self.label, ok=True, ttft_s=self.t_first - self.t_open,
                                  output_tokens=u.output_tokens, gen_s=now - self.t_first)
        if self.metrics is not None:
            t_tok = self.t_token
            self.metrics.answer(self.target, t_tok - self.t_arrival if t_tok else None, u,
                                time.perf_counter() - t_tok if t_tok else 0.0)


def observe(telemetry: Telemetry, config: Config, req: ChatRequest, st: Source, metrics: Metrics | None = None,
            t_arrival: float = 0.0) -> Observed:
    """``st`` seen by the bookkeeping: usage, local speed, which session made a tool
    call, and with ``metrics`` the Prometheus figures (``t_arrival``: when the
    request arrived, perf_counter)."""
    return Observed(st, telemetry, config, req, metrics, t_arrival)
