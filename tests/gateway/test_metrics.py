"""gateway/metrics.py without processes: what is recorded comes out of the scrape
as Prometheus reads it (its own parser), with bounded labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from turnout.gateway.metrics import Hist, Metrics, cloud_labels, status_class
from turnout.protocol import messages as m
from turnout.protocol.chat import Usage
from turnout.protocol.config import Config, EndpointConfig, EndpointModel, ModelConfig

CFG = Config(models=[ModelConfig(name="fake", backend="fake")],
             endpoints=[EndpointConfig(name="oai", provider="openai", models=[EndpointModel(name="gpt-x")])])


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_a_value_on_a_bucket_bound_falls_in_that_bucket() -> None:
    h = Hist((0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.sum == 8.6


def test_a_cloud_model_the_config_does_not_list_is_labelled_other() -> None:
    ep = CFG.endpoints[0]
    assert cloud_labels(ep, "gpt-x") == ("gpt-x", "oai")
    assert cloud_labels(ep, "anything-a-client-sends") == ("other", "oai")
    assert [status_class(s) for s in (200, 404, 499, 529, 0)] == ["2xx", "4xx", "4xx", "5xx", "other"]


def test_what_is_recorded_is_scraped() -> None:
    mx = Metrics(CFG)
    for _ in range(3):
        mx.request("/v1/messages", ("fake", "local"), 200)
        mx.waited("fake", 0.002)
        mx.answer(("fake", "local"), 0.05, Usage(input_tokens=7, output_tokens=5, cache_read_input_tokens=2), 0.4)
    mx.answer(("fake", "local"), None, Usage(input_tokens=1, output_tokens=1), 0.0)  # one token: no gap to measure
    mx.request("/v1/messages", ("", ""), 404)
    mx.failed(("fake", "local"), "worker_died")
    mx.cancelled("fake", 1_000_000, 4_000_000)
    mx.upstream_error("oai", 503)
    mx.upstream_error("oai", 0)
    mx.fallback("oai")
    st = m.StatusReply(workers=[m.WorkerInfo("fake-0", "fake", "fake", 42, "ready", 5 << 20, 0, 2, 9.0)],
                       available_bytes=1 << 30, total_bytes=2 << 30,
                       lifecycle=[m.LifecycleCount("fake", "restart", "killed", 2)])
    s = samples(mx.render(st, [("fake", "fake-0", 1)], 3))
    lab = {"model": "fake", "endpoint": "local"}

    def v(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    assert v("turnout_requests_total", route="/v1/messages", status="2xx", **lab) == 3
    assert v("turnout_requests_total", route="/v1/messages", model="", endpoint="", status="4xx") == 1
    assert v("turnout_ttft_seconds_count", **lab) == 3
    assert v("turnout_ttft_seconds_bucket", le="0.05", **lab) == 3
    assert v("turnout_inter_token_latency_seconds_count", **lab) == 3  # 0.4 s over 4 gaps: 0.1 each
    assert v("turnout_inter_token_latency_seconds_bucket", le="0.1", **lab) == 3
    assert v("turnout_inter_token_latency_seconds_bucket", le="0.05", **lab) == 0
    assert (v("turnout_prompt_tokens_total", **lab), v("turnout_generated_tokens_total", **lab),
            v("turnout_cache_read_tokens_total", **lab)) == (22, 16, 6)
    assert v("turnout_queue_wait_seconds_count", model="fake") == 3
    assert v("turnout_cancel_seconds_bucket", model="fake", le="0.0025") == 0
    assert v("turnout_cancel_seconds_bucket", model="fake", le="0.005") == 1
    assert v("turnout_stream_failures_total", kind="worker_died", **lab) == 1
    assert v("turnout_upstream_errors_total", endpoint="oai", status="5xx") == 1
    assert v("turnout_upstream_errors_total", endpoint="oai", status="connection") == 1
    assert v("turnout_upstream_fallbacks_total", endpoint="oai") == 1
    assert v("turnout_worker_restarts_total", model="fake", reason="killed") == 2
    assert v("turnout_worker_rss_bytes", model="fake", worker="fake-0") == 5 << 20
    assert v("turnout_worker_in_flight", model="fake", worker="fake-0") == 1
    assert v("turnout_stream_frames_dropped_total") == 3
    assert v("turnout_supervisor_up") == 1


def test_without_the_supervisor_the_gateways_own_figures_still_come() -> None:
    mx = Metrics(CFG)
    mx.request("/healthz", ("", ""), 200)
    s = samples(mx.render(None, [], 0))
    assert s[("turnout_supervisor_up", frozenset())] == 0
    assert not any(name == "turnout_worker_rss_bytes" for name, _ in s)
    assert s[("turnout_requests_total", frozenset({"route": "/healthz", "model": "", "endpoint": "",
                                                   "status": "2xx"}.items()))] == 1
