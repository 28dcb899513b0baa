"""Prometheus metrics of the gateway and, through it, of the supervisor and the
workers (issue 17): ``GET /metrics`` in Prometheus's text format.

Two kinds of figures:

* Recorded as requests happen: requests by route, model, endpoint and status
  class; TTFT; inter-token latency; prompt, generated and cache-read tokens; queue
  wait; cancel latency; stream failures; upstream errors and fallbacks. Each is
  updated a few times per request, never per token: TTFT once, at the first token;
  the inter-token latency once, from the Done message (the request's generation
  time over its tokens after the first). They are plain dicts of numbers and
  bucket lists, turned into Prometheus families only when scraped:
  prometheus_client's own Counter and Histogram take a lock and resolve labels on
  every update, 33 µs a request on this 2-core machine for the eight updates an
  answer makes, against about 3 µs this way (the event loop is the only writer).
  prometheus_client writes the text format, from a registry of this gateway's own
  (never the library's global one).
* Read at scrape time (:class:`Snapshot`, a custom collector): the supervisor's
  ``Status`` reply over the bus (worker states, RSS, restarts, evictions and parks
  by reason, memory) and the gateway's own worker table (in-flight requests). The
  workers and the supervisor serve no HTTP of their own: what they know reaches
  the gateway over the sockets it already has.

Label values are bounded: routes from the router's table (``other`` for a path no
route matches), models and endpoints from the config (``other`` for a cloud model
the config does not list, which a client could otherwise make up), status classes
(``2xx``...), reasons and failure kinds from fixed vocabularies (protocol/), worker
ids from the supervisor's slots. Never a string a request chose.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from turnout.protocol import messages as m
from turnout.protocol.config import Config, EndpointConfig

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. TTFT spans a cached cloud answer (ms) and a cold 20k-token local prefill (minutes).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0)
CANCEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

LOCAL = "local"  # the endpoint label of a local model
OTHER = "other"
NO_TARGET = ("", "")  # (model, endpoint) of a request that reached no model
TARGET_KEY = "turnout.metrics_target"  # request key: the (model, endpoint) labels it was served by
# The local model a request's handler sent work to (set by the bus when it opens a
# request or a media job, in the handler's own task; read by the middleware after
# it): how media, embeddings and token counts get their model label.
SERVED: ContextVar[tuple[str, str]] = ContextVar("turnout_metrics_served", default=NO_TARGET)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else OTHER


def cloud_labels(ep: EndpointConfig, model: str) -> tuple[str, str]:
    """(model, endpoint) labels of a cloud target: a model the endpoint's config
    lists, else ``other`` (``endpoint/anything`` is passed through as asked)."""
    return (model if any(x.name == model for x in ep.models) else OTHER), ep.name


class Snapshot(Collector):
    """What is read when Prometheus scrapes: set by :meth:`Metrics.render` just
    before the registry is collected (the supervisor's reply and the gateway's
    worker loads), then yielded as families."""

    def __init__(self) -> None:
        self.status: m.StatusReply | None = None
        self.loads: list[tuple[str, str, int]] = []  # (model, worker, in flight)
        self.dropped_frames = 0

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("turnout_supervisor_up", "1 when the supervisor answered this scrape's Status")
        up.add_metric([], 1.0 if self.status is not None else 0.0)
        yield up
        infl = GaugeMetricFamily("turnout_worker_in_flight", "Requests the gateway holds on each worker",
                                 labels=["model", "worker"])
        for model, worker, n in self.loads:
            infl.add_metric([model, worker], float(n))
        yield infl
        dropped = CounterMetricFamily("turnout_stream_frames_dropped",
                                      "Stream frames for requests the gateway no longer tracks (or undecodable)")
        dropped.add_metric([], float(self.dropped_frames))
        yield dropped
        st = self.status
        if st is None:
            return
        rss = GaugeMetricFamily("turnout_worker_rss_bytes", "Resident memory of each worker's process tree",
                                labels=["model", "worker"])
        states = GaugeMetricFamily("turnout_workers", "Workers by state", labels=["model", "state"])
        by_state: dict[tuple[str, str], int] = {}
        for w in st.workers:
            rss.add_metric([w.model, w.id], float(w.rss_bytes))
            by_state[(w.model, w.state)] = by_state.get((w.model, w.state), 0) + 1
        for (model, state), n in sorted(by_state.items()):
            states.add_metric([model, state], float(n))
        yield rss
        yield states
        families = {
            "restart": CounterMetricFamily("turnout_worker_restarts", "Worker restarts by reason",
                                           labels=["model", "reason"]),
            "eviction": CounterMetricFamily("turnout_worker_evictions", "Workers evicted by reason",
                                            labels=["model", "reason"]),
            "park": CounterMetricFamily("turnout_worker_parks", "Workers parked as failed by reason",
                                        labels=["model", "reason"]),
        }
        for c in st.lifecycle:
            fam = families.get(c.kind)
            if fam is not None:
                fam.add_metric([c.model, c.reason], float(c.count))
        yield from families.values()
        gw = CounterMetricFamily("turnout_gateway_restarts", "Times the supervisor restarted the gateway")
        gw.add_metric([], float(st.gateway_restarts))
        yield gw
        avail = GaugeMetricFamily("turnout_memory_available_bytes", "Available memory (psutil's available)")
        avail.add_metric([], float(st.available_bytes))
        yield avail
        total = GaugeMetricFamily("turnout_memory_total_bytes", "Total memory")
        total.add_metric([], float(st.total_bytes))
        yield total
        pressure = GaugeMetricFamily("turnout_memory_pressure", "1 for the memory pressure level in force",
                                     labels=["level"])
        for level in ("none", "soft", "hard"):
            pressure.add_metric([level], 1.0 if st.pressure == level else 0.0)
        yield pressure


class Hist:
    """One histogram series: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1  # le is inclusive: v == bound falls in it
        self.sum += v

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for b, c in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            acc += c
            out.append((b, float(acc)))
        return out


def _le(b: float) -> str:
    return repr(float(b))


class Answers:
    """What the answers of one (model, endpoint) added up to."""

    __slots__ = ("cache_read", "generated", "itl", "prompt", "ttft")

    def __init__(self) -> None:
        self.ttft = Hist(TTFT_BUCKETS)
        self.itl = Hist(ITL_BUCKETS)
        self.prompt = 0
        self.generated = 0
        self.cache_read = 0


class Metrics(Collector):
    """The gateway's metrics. One per gateway (an app key), passed to what records;
    the event loop's thread is the only one that records or scrapes.

    Options:
        config: the models and endpoints whose names may be labels."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.requests: dict[tuple[str, str, str, str], int] = {}  # (route, model, endpoint, status class)
        self.answers: dict[tuple[str, str], Answers] = {}  # (model, endpoint)
        self.queue_wait: dict[str, Hist] = {}  # model
        self.cancel_latency: dict[str, Hist] = {}  # model
        self.stream_failures: dict[tuple[str, str, str], int] = {}  # (model, endpoint, kind)
        self.upstream_errors: dict[tuple[str, str], int] = {}  # (endpoint, status class)
        self.fallbacks: dict[str, int] = {}  # endpoint
        self.snapshot = Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.registry.register(self.snapshot)

    # -------------------------------------------------------------- recording

    def request(self, route: str, target: tuple[str, str], status: int) -> None:
        key = (route, target[0], target[1], status_class(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def answer(self, target: tuple[str, str], ttft_s: float | None, usage: Any, gen_s: float) -> None:
        """One finished answer (its Done): TTFT, the mean inter-token latency, tokens."""
        a = self.answers.get(target)
        if a is None:
            a = self.answers[target] = Answers()
        if ttft_s is not None:
            a.ttft.observe(ttft_s)
        n = usage.output_tokens
        if n > 1 and gen_s > 0:
            a.itl.observe(gen_s / (n - 1))
        a.prompt += usage.input_tokens
        a.generated += n
        a.cache_read += usage.cache_read_input_tokens

    def failed(self, target: tuple[str, str], kind: str) -> None:
        key = (target[0], target[1], kind)
        self.stream_failures[key] = self.stream_failures.get(key, 0) + 1

    def waited(self, model: str, seconds: float) -> None:
        h = self.queue_wait.get(model)
        if h is None:
            h = self.queue_wait[model] = Hist(WAIT_BUCKETS)
        h.observe(seconds)

    def cancelled(self, model: str, t_cancel_ns: int, t_stop_ns: int) -> None:
        if t_stop_ns and t_cancel_ns:
            h = self.cancel_latency.get(model)
            if h is None:
                h = self.cancel_latency[model] = Hist(CANCEL_BUCKETS)
            h.observe(max(0.0, (t_stop_ns - t_cancel_ns) / 1e9))

    def upstream_error(self, endpoint: str, status: int) -> None:
        key = (endpoint, status_class(status) if status else "connection")
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def fallback(self, endpoint: str) -> None:
        self.fallbacks[endpoint] = self.fallbacks.get(endpoint, 0) + 1

    # -------------------------------------------------------------- scraping

    def collect(self) -> Iterator[Metric]:
        req = CounterMetricFamily("turnout_requests", "HTTP requests answered",
                                  labels=["route", "model", "endpoint", "status"])
        for key, n in sorted(self.requests.items()):
            req.add_metric(list(key), float(n))
        yield req
        ml = ["model", "endpoint"]
        ttft = HistogramMetricFamily("turnout_ttft_seconds", "Time from a request's arrival to its first token",
                                     labels=ml)
        itl = HistogramMetricFamily("turnout_inter_token_latency_seconds",
                                    "Mean time between tokens after the first, one observation per answer", labels=ml)
        prompt = CounterMetricFamily("turnout_prompt_tokens", "Prompt tokens not read from a cache", labels=ml)
        gen = CounterMetricFamily("turnout_generated_tokens", "Tokens generated", labels=ml)
        cache = CounterMetricFamily("turnout_cache_read_tokens", "Prompt tokens read from a KV or prompt cache",
                                    labels=ml)
        for (model, ep), a in sorted(self.answers.items()):
            ttft.add_metric([model, ep], a.ttft.cumulative(), a.ttft.sum)
            itl.add_metric([model, ep], a.itl.cumulative(), a.itl.sum)
            prompt.add_metric([model, ep], float(a.prompt))
            gen.add_metric([model, ep], float(a.generated))
            cache.add_metric([model, ep], float(a.cache_read))
        yield from (ttft, itl, prompt, gen, cache)
        for name, doc, series in (
                ("turnout_queue_wait_seconds",
                 "Time a local request waited for a worker (a free one, a start or a load)", self.queue_wait),
                ("turnout_cancel_seconds", "Client gone to the worker's loop stopped (local models)",
                 self.cancel_latency)):
            fam = HistogramMetricFamily(name, doc, labels=["model"])
            for model, h in sorted(series.items()):
                fam.add_metric([model], h.cumulative(), h.sum)
            yield fam
        fail = CounterMetricFamily("turnout_stream_failures",
                                   "Answers their worker or upstream ended with an error (before or after the first byte)",
                                   labels=["model", "endpoint", "kind"])
        for key3, n in sorted(self.stream_failures.items()):
            fail.add_metric(list(key3), float(n))
        yield fail
        up = CounterMetricFamily("turnout_upstream_errors", "Cloud requests that failed (not cancelled)",
                                 labels=["endpoint", "status"])
        for key2, n in sorted(self.upstream_errors.items()):
            up.add_metric(list(key2), float(n))
        yield up
        fb = CounterMetricFamily("turnout_upstream_fallbacks", "Requests moved to the next target before any byte",
                                 labels=["endpoint"])
        for ep, n in sorted(self.fallbacks.items()):
            fb.add_metric([ep], float(n))
        yield fb

    def render(self, status: m.StatusReply | None, loads: list[tuple[str, str, int]], dropped_frames: int) -> bytes:
        """The text exposition, with the scrape-time figures given."""
        self.snapshot.status = status
        self.snapshot.loads = loads
        self.snapshot.dropped_frames = dropped_frames
        return generate_latest(self.registry)
