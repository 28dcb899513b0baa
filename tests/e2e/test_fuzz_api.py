"""Property-based fuzzing of every API body (issue 14): schemathesis reads the
OpenAPI description the gateway serves at /openapi.json (built from the msgspec
types the routes decode with) and sends valid and invalid bodies, headers and path
parameters to a real ``turnout up`` with the fake backend. Every answer must be no
5xx other than overloaded ones, every error must be in its API's shape, and the
gateway must be healthy, unrestarted and without an unhandled error afterwards.

Bounded for CI: ``TURNOUT_FUZZ_EXAMPLES`` examples per operation and mode (valid,
invalid; default 25)."""

from __future__ import annotations

import collections
import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import FAKE_CONFIG
from turnout.gateway import openapi
from turnout.supervisor.launch import TurnoutProcess

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "25"))
# Three tokens an answer; nothing configured beyond the fake (no media worker: those
# routes answer 404 for the model, after validating their bodies).
FUZZ_CONFIG = FAKE_CONFIG.replace("reply_tokens = 12", "reply_tokens = 3")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    t = TurnoutProcess(FUZZ_CONFIG, workdir=str(tmp_path_factory.mktemp("fuzz")))
    t.start()
    yield t
    t.stop()
    assert not t.leftovers(), t.leftovers()


# The same document the gateway serves (checked below), loaded at collection so that
# each operation is a test of its own.
SCHEMA = schemathesis.openapi.from_dict(openapi.document())
OPERATIONS = [r.ok() for r in SCHEMA.get_all_operations()]


def test_served_description_is_the_one_fuzzed(fuzzed: TurnoutProcess) -> None:
    with urllib.request.urlopen(fuzzed.base_url + "/openapi.json", timeout=5) as r:  # no token needed
        assert json.loads(r.read()) == json.loads(json.dumps(openapi.document()))
    assert {op.label for op in OPERATIONS} >= {"POST /v1/messages", "POST /v1/chat/completions", "POST /v1/responses",
                                              "POST /v1/embeddings", "POST /v1/messages/count_tokens"}


def _shape_ok(path: str, body: Any, anthropic_version: bool) -> bool:
    openai = path.startswith(("/v1/chat", "/v1/responses", "/v1/embeddings", "/v1/audio", "/v1/ocr", "/v1/images")) \
        or (path.startswith("/v1/models") and not anthropic_version)
    e = body.get("error") if isinstance(body, dict) else None
    if not isinstance(e, dict) or not isinstance(e.get("message"), str) or not isinstance(e.get("type"), str):
        return False
    return openai or body.get("type") == "error"


# Invalid input needs something to break: a body or a path parameter.
CASES = [(op, mode) for op in OPERATIONS for mode in schemathesis.GenerationMode
         if mode == schemathesis.GenerationMode.POSITIVE or op.body or op.path_parameters]


@pytest.mark.parametrize(("op", "mode"), CASES,
                         ids=[f"{mode.value}-{op.label}".replace(" ", "").replace("/", "_") for op, mode in CASES])
def test_fuzzed_requests_get_no_500_and_errors_in_the_api_shape(op: Any, mode: Any, fuzzed: TurnoutProcess) -> None:
    seen: list[int] = []

    @given(case=op.as_strategy(generation_mode=mode), aim=st.booleans())
    # No shrinking: a failure is reported as found (shrinking one took minutes), so a
    # failing run stays as bounded in time as a passing one.
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.explicit, Phase.generate])
    def run(case: Any, aim: bool) -> None:
        if aim and isinstance(case.body, dict):
            # Half the bodies name the served model and carry a message, so the fuzz
            # also reaches the worker, the collector and the stream encoders rather
            # than stopping at 404 or "messages: at least one message is required".
            case.body["model"] = "fake"
            if mode == schemathesis.GenerationMode.POSITIVE and case.body.get("messages") == []:
                case.body["messages"] = [{"role": "user", "content": "fuzz"}]
        headers = {**(case.headers or {}), "x-api-key": fuzzed.token}  # the body is what is fuzzed, not the auth
        resp = case.call(base_url=fuzzed.base_url, headers=headers, timeout=30)
        seen.append(resp.status_code)
        assert resp.status_code < 500 or resp.status_code in (503, 529), (resp.status_code, resp.text[:500])
        if resp.status_code >= 400:
            ctype = (resp.headers.get("content-type") or [""])[0]  # schemathesis keeps every value of a header
            assert ctype.startswith("application/json"), resp.text[:300]
            anthropic_version = any(k.lower() == "anthropic-version" for k in headers)
            assert _shape_ok(op.path, resp.json(), anthropic_version), (resp.status_code, resp.text[:500])
        case.validate_response(resp, checks=[not_a_server_error, response_schema_conformance])

    run()
    assert seen  # something was sent
    if os.environ.get("TURNOUT_FUZZ_SHOW"):
        print(op.label, mode.value, sorted(collections.Counter(seen).items()))


def test_gateway_healthy_after_fuzzing(fuzzed: TurnoutProcess) -> None:
    """Runs after the fuzzed cases (pytest keeps file order): no restart, no
    unhandled error, still answering."""
    assert fuzzed.healthz()[0] == 200
    events = fuzzed.log_events()
    assert not [e for e in events if e.get("event") in ("unhandled_error", "http_error", "http_internal_error")]
    assert not [e for e in events if e.get("event") == "child_exited"], "a process of turnout died while fuzzed"
    assert sum(e.get("event") == "spawned" and e.get("kind") == "gateway" for e in events) == 1
