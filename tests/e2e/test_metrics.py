"""Issue 17: ``GET /metrics`` against a real ``turnout up`` (supervisor, gateway and
fake worker processes, real sockets): a known set of requests, then the scrape
parsed with prometheus_client's own parser and its counts checked."""

from __future__ import annotations

import http.client
import json
import os
import signal
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAKE_CONFIG, SLOW_CONFIG
from tests.helpers import cancel_mid_stream, poll_until
from tests.supervisor.helpers import command
from turnout.protocol import messages as m
from turnout.supervisor.launch import TurnoutProcess, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

FAKE = {"model": "fake", "endpoint": "local"}


def request(port: int, method: str, path: str, body: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"content-type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def scrape(port: int, token: str | None = None, host: str | None = None) -> tuple[int, str]:
    headers = {"x-api-key": token} if token else {}
    if host:
        headers["Host"] = host
    status, body = request(port, "GET", "/metrics", headers=headers)
    return status, body.decode()


def parse(text: str) -> Samples:
    """Every sample of the exposition, by name and labels (the parser fails on
    anything Prometheus could not read)."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def metrics_of(t: TurnoutProcess) -> Samples:
    status, text = scrape(t.port, t.token)
    assert status == 200, text
    return parse(text)


def metrics_when(t: TurnoutProcess, name: str, want: float | None = None, timeout: float = 10.0,
                 **labels: str) -> Samples:
    """Scrape until ``name{labels}`` is non-zero (or equals ``want``), then that scrape."""
    def ok() -> Samples | None:
        try:
            s = metrics_of(t)
        except OSError:  # not listening yet
            return None
        v = s.get((name, frozenset(labels.items())))
        return s if v is not None and (v == want if want is not None else v) else None
    return poll_until(ok, timeout=timeout)


def chat(t: TurnoutProcess, path: str, n: int, stream: bool, model: str = "fake") -> tuple[int, bytes]:
    return request(t.port, "POST", path, {"model": model, "max_tokens": n, "stream": stream,
                                          "messages": [{"role": "user", "content": "count these words"}]},
                   {"x-api-key": t.token})


def sse_input_tokens(raw: bytes) -> int:
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and '"message_start"' in line:
            return int(json.loads(line[6:])["message"]["usage"]["input_tokens"])
    raise AssertionError("no message_start")


def test_metrics_count_the_requests_made(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    """3 streams, 2 whole answers, 1 unknown model, 1 token count, 1 cancelled
    stream, 1 scrape without the token: each counted under its route, model, endpoint and status
    class; the token counters add up to the answers' usage; the histograms saw
    every answer, every dispatch and the cancel."""
    t = turnout_factory(SLOW_CONFIG)  # max_tokens tokens, 20 ms apart
    prompt = 0
    for _ in range(3):
        status, raw = chat(t, "/v1/messages", 4, stream=True)
        assert status == 200
        prompt += sse_input_tokens(raw)
    for _ in range(2):
        status, raw = chat(t, "/v1/chat/completions", 3, stream=False)
        assert status == 200
        usage = json.loads(raw)["usage"]
        assert usage["completion_tokens"] == 3
        prompt += usage["prompt_tokens"]
    status, _ = chat(t, "/v1/messages", 4, stream=False, model="no-such-model")
    assert status == 404
    status, raw = request(t.port, "POST", "/v1/messages/count_tokens", {
        "model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "count these words"}]},
        {"x-api-key": t.token})
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    cancel_mid_stream(t.port, t.token)

    status, text = scrape(t.port)  # no token
    assert status == 401 and "turnout_" not in text
    # The cancelled request is counted once its handler has ended, and the cancel
    # latency once the worker's Done has come back: both after the client left.
    s = metrics_when(t, "turnout_cancel_seconds_count", model="fake")

    req = "turnout_requests_total"
    assert value(s, req, route="/v1/messages", status="2xx", **FAKE) == 3
    assert value(s, req, route="/v1/chat/completions", status="2xx", **FAKE) == 2
    assert value(s, req, route="/v1/messages", model="", endpoint="", status="4xx") == 1  # the unknown model
    assert value(s, req, route="/v1/messages", status="4xx", **FAKE) == 1  # the cancelled one (499)
    assert value(s, req, route="/metrics", model="", endpoint="", status="4xx") == 1  # the 401
    # Counted by the model that served it (a glob alias's model, never the name sent).
    assert value(s, req, route="/v1/messages/count_tokens", status="2xx", **FAKE) == 1
    # The requested "no-such-model" never becomes a label value.
    assert "no-such-model" not in "".join(v for _, labels in s for _, v in labels)

    assert value(s, "turnout_generated_tokens_total", **FAKE) == 3 * 4 + 2 * 3  # finished answers
    assert value(s, "turnout_prompt_tokens_total", **FAKE) == prompt > 0
    assert value(s, "turnout_ttft_seconds_count", **FAKE) == 5
    assert 0 < value(s, "turnout_ttft_seconds_sum", **FAKE) < 5 * 10
    assert value(s, "turnout_inter_token_latency_seconds_count", **FAKE) == 5
    # The fake sleeps 20 ms per token: the mean gap of each answer is at least that.
    assert value(s, "turnout_inter_token_latency_seconds_bucket", le="0.01", **FAKE) == 0
    assert value(s, "turnout_queue_wait_seconds_count", model="fake") == 7  # every dispatched request
    assert value(s, "turnout_cancel_seconds_count", model="fake") == 1
    assert value(s, "turnout_cancel_seconds_bucket", model="fake", le="+Inf") == 1

    # From the supervisor and the gateway's worker table, read at scrape time.
    assert value(s, "turnout_supervisor_up") == 1
    assert value(s, "turnout_worker_rss_bytes", model="fake", worker="fake-0") > 1e6
    assert value(s, "turnout_workers", model="fake", state="ready") == 1
    assert value(s, "turnout_memory_available_bytes") > 0
    assert value(s, "turnout_memory_total_bytes") >= value(s, "turnout_memory_available_bytes")
    assert value(s, "turnout_worker_restarts_total", model="fake", reason="killed") == 0
    metrics_when(t, "turnout_worker_in_flight", 0, model="fake", worker="fake-0")


def test_killed_and_crashed_workers_show_in_the_restarts_by_reason(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(FAKE_CONFIG)
    os.kill(t.worker_pids()["fake-0"], signal.SIGKILL)  # from outside turnout: the OOM killer, say
    s = metrics_when(t, "turnout_worker_restarts_total", model="fake", reason="killed")
    assert value(s, "turnout_worker_restarts_total", model="fake", reason="killed") == 1
    assert value(s, "turnout_worker_restarts_total", model="fake", reason="exited") == 0
    t.wait_healthy(20)
    status, _ = request(t.port, "POST", "/v1/messages", {"model": "fake", "max_tokens": 20, "messages": [
        {"role": "user", "content": "tick tock [[crash:2]]"}]}, {"x-api-key": t.token})
    assert status == 529  # the worker died under the request
    s = metrics_when(t, "turnout_worker_restarts_total", model="fake", reason="exited")
    assert value(s, "turnout_worker_restarts_total", model="fake", reason="exited") == 1
    assert value(s, "turnout_worker_restarts_total", model="fake", reason="killed") == 1
    assert value(s, "turnout_worker_evictions_total", model="fake", reason="idle") == 0


def test_evicted_and_parked_workers_show_with_their_reason(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(FAKE_CONFIG + """
[[models]]
name = "broken"
backend = "fake"
[models.options]
fail_load = true
""", wait=False)
    s = metrics_when(t, "turnout_worker_parks_total", model="broken", reason="load_error", timeout=20)
    assert value(s, "turnout_worker_parks_total", model="broken", reason="crash_loop") == 0
    poll_until(lambda: t.healthz()[1].get("workers_ready") == 1, timeout=20)
    assert isinstance(command(t, m.EvictModel("fake")), m.Ack)  # as `turnout evict fake` sends it
    s = metrics_when(t, "turnout_worker_evictions_total", model="fake", reason="requested")
    assert value(s, "turnout_worker_evictions_total", model="fake", reason="requested") == 1


def test_the_unauthenticated_port_serves_only_metrics_on_loopback(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    mport = free_port()
    t = turnout_factory(FAKE_CONFIG + f"\n[metrics]\nport = {mport}\n")
    status, text = scrape(mport)  # no token
    assert status == 200
    assert value(parse(text), "turnout_workers", model="fake", state="ready") == 1
    # Nothing else is served there, with or without the token.
    for method, path in (("GET", "/v1/models"), ("GET", "/admin/workers"), ("POST", "/v1/messages"),
                         ("GET", "/healthz")):
        status, _ = request(mport, method, path, {"model": "fake", "max_tokens": 1, "messages": []}
                            if method == "POST" else None, {"x-api-key": t.token})
        assert status in (404, 405), (method, path, status)
    # A DNS-rebinding page reaches it under its own name: refused.
    status, text = scrape(mport, host=f"attacker.example:{mport}")
    assert status == 403 and "turnout_" not in text
    # Bound to the loopback address, not the machine's others.
    listening = [c.laddr for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == mport]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
    # The main port still wants the token for /metrics.
    assert scrape(t.port)[0] == 401
    assert scrape(t.port, t.token)[0] == 200


def test_metrics_off_means_no_route(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(FAKE_CONFIG + "\n[metrics]\nenabled = false\n")
    status, text = scrape(t.port, t.token)
    assert status == 404 and "turnout_" not in text
    assert chat(t, "/v1/messages", 3, stream=False)[0] == 200


CLOUD = """
[server]
worker_wait_s = 10.0

[[models]]
name = "fake"
backend = "fake"

[[endpoints]]
name = "oai"
provider = "openai"
base_url = "{url}/openai/v1"
[[endpoints.models]]
name = "gpt-test"

[[endpoints]]
name = "down"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
key = "oai"

[routing]
retries = 0
[routing.aliases]
opus = ["down/gpt-x", "oai/gpt-test"]
"""


def test_cloud_requests_fallbacks_and_upstream_errors(turnout_factory, upstreams) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(CLOUD.format(url=upstreams.url), env={"TURNOUT_KEY_OAI": upstreams.keys["openai"]})
    assert chat(t, "/v1/messages", 5, stream=False, model="opus")[0] == 200  # "down" refuses: falls back
    assert chat(t, "/v1/messages", 5, stream=True, model="oai/gpt-test")[0] == 200
    assert chat(t, "/v1/messages", 5, stream=False, model="oai/whatever-a-client-says")[0] == 200
    upstreams.fail_next["openai"] = [503]
    assert chat(t, "/v1/chat/completions", 5, stream=False, model="oai/gpt-test")[0] >= 500
    s = metrics_of(t)
    req = "turnout_requests_total"
    assert value(s, req, route="/v1/messages", model="gpt-test", endpoint="oai", status="2xx") == 2
    assert value(s, req, route="/v1/messages", model="other", endpoint="oai", status="2xx") == 1
    assert value(s, req, route="/v1/chat/completions", model="", endpoint="", status="5xx") == 1
    assert value(s, "turnout_upstream_fallbacks_total", endpoint="down") == 1
    assert value(s, "turnout_upstream_errors_total", endpoint="down", status="5xx") == 1  # unreachable: a 502
    assert value(s, "turnout_upstream_errors_total", endpoint="oai", status="5xx") == 1
    assert value(s, "turnout_ttft_seconds_count", model="gpt-test", endpoint="oai") == 2
    assert value(s, "turnout_generated_tokens_total", model="gpt-test", endpoint="oai") > 0
    assert "whatever-a-client-says" not in "".join(v for _, labels in s for _, v in labels)
