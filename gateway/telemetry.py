"""Rolling measurements per endpoint and per session, for ``/admin/endpoints`` and
for the recommendation tool (``endpoint_recommend``) of the MCP server.

Per endpoint (the last ``WINDOW`` requests): time to first token, generation
speed in tokens/s, error rate, requests and cancellations. Per session (Claude
Code's session id): the conversation's size in tokens as last seen, the endpoint
that served it and any override. Pure bookkeeping: no I/O, no keys.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

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


class Telemetry:
    """Options:
    window: samples kept per endpoint; max_sessions: sessions remembered (LRU)."""

    def __init__(self, window: int = WINDOW, max_sessions: int = MAX_SESSIONS) -> None:
        self.window = window
        self.max_sessions = max_sessions
        self.endpoints: dict[str, EndpointStats] = {}
        self.sessions: OrderedDict[str, SessionInfo] = OrderedDict()

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
