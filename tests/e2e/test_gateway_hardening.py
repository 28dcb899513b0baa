"""Issue 14, the gateway's half: each attack a hostile client tried, reproduced
against a real ``turnout up`` (supervisor, gateway and fake worker processes, real
sockets), with what must happen instead."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from typing import Any

import pytest

from supervisor.launch import TurnoutProcess
from tests.conftest import FAKE_CONFIG
from tests.helpers import poll_until

# The fake streams exactly max_tokens tokens, as fast as it can.
FLOOD_CONFIG = FAKE_CONFIG.replace("reply_tokens = 12", "reply_tokens = 0")
# The same with a window too large to bound anything, and the gateway's cap raised:
# what is left to stop a huge answer is the gateway itself.
UNBOUNDED = FLOOD_CONFIG.replace("reply_tokens = 0", "reply_tokens = 0\ncontext_window = 4000000000")


def with_server(config: str, extra: str) -> str:
    return config.replace("[server]\n", "[server]\n" + extra.strip() + "\n", 1)


def post(t: TurnoutProcess, path: str, body: dict[str, Any] | bytes, timeout: float = 10.0,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=timeout)
    try:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, body=raw, headers={"x-api-key": t.token, "content-type": "application/json",
                                                      **(headers or {})})
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else {}
    finally:
        conn.close()


def healthz_ms(t: TurnoutProcess) -> float:
    t0 = time.perf_counter()
    status, _ = t.healthz()  # a 2 s timeout of its own
    assert status == 200
    return (time.perf_counter() - t0) * 1000


def chat(n: int, text: str = "flood the gateway", **kw: Any) -> dict[str, Any]:
    return {"model": "fake", "max_tokens": n, "messages": [{"role": "user", "content": text}], **kw}


# ------------------------------------------------------------------ item 1


def test_huge_max_tokens_is_a_400_naming_the_field(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    """The issue's requests: max_tokens 10^9 on chat completions, 2^63-1 and past
    2^64 on messages. Before: the gateway froze (or 500 OverflowError)."""
    t = turnout_factory(FLOOD_CONFIG)
    status, body = post(t, "/v1/chat/completions", chat(1_000_000_000))
    assert status == 400, body
    assert body["error"]["param"] == "max_tokens" and "max_tokens" in body["error"]["message"]
    for n in (2**63 - 1, 2**64 + 1, 10**30):
        status, body = post(t, "/v1/messages", chat(n))
        assert status == 400, (n, body)
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("max_tokens: ")
    status, body = post(t, "/v1/responses", {"model": "fake", "input": "hi", "max_output_tokens": 2**70})
    assert status == 400 and body["error"]["param"] == "max_output_tokens", body
    assert healthz_ms(t) < 2000
    assert t.admin_workers()[0]["in_flight"] == 0


def test_a_long_whole_answer_never_blocks_the_gateway(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    """With the cap raised, one non-streaming request for 10^8 tokens: /healthz keeps
    answering while it runs; past max_response_mb the answer ends with an error in
    the API's shape and the worker is stopped."""
    t = turnout_factory(with_server(UNBOUNDED, "max_tokens_limit = 1000000000\nmax_response_mb = 4"))
    out: dict[str, Any] = {}

    def big() -> None:
        # Each token is one 4 KiB word: the bound is reached after ~1000 tokens.
        out["r"] = post(t, "/v1/chat/completions", chat(100_000_000, "x" * 4096), timeout=60)

    th = threading.Thread(target=big)
    th.start()
    lat = []
    while th.is_alive() and len(lat) < 50:
        lat.append(healthz_ms(t))
        time.sleep(0.02)
    th.join(60)
    status, body = out["r"]
    assert status == 400, body
    assert "max_response_mb" in body["error"]["message"]
    assert max(lat) < 1000, lat
    assert poll_until(lambda: t.admin_workers()[0]["in_flight"] == 0, timeout=5)
    assert any(e.get("event") == "request_cancelled" for e in t.log_events())


def test_client_giving_up_on_a_whole_answer_cancels_it(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(with_server(UNBOUNDED, "max_tokens_limit = 1000000000\nmax_response_mb = 100000"))
    with pytest.raises((TimeoutError, socket.timeout)):
        post(t, "/v1/messages", chat(500_000_000), timeout=1.0)
    ev = poll_until(lambda: [e for e in t.log_events() if e.get("event") == "request_cancelled"], timeout=5)[0]
    assert ev["cancel_ms"] >= 0
    assert poll_until(lambda: t.admin_workers()[0]["in_flight"] == 0, timeout=5)
    assert healthz_ms(t) < 2000


def test_killing_the_worker_ends_a_whole_answer(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(with_server(UNBOUNDED, "max_tokens_limit = 1000000000\nmax_response_mb = 100000"))
    pid = t.worker_pids()["fake-0"]
    out: dict[str, Any] = {}
    th = threading.Thread(target=lambda: out.setdefault("r", post(t, "/v1/messages", chat(500_000_000), timeout=30)))
    th.start()
    poll_until(lambda: t.admin_workers()[0]["in_flight"] == 1, timeout=5)
    os.kill(pid, signal.SIGKILL)
    th.join(15)
    assert not th.is_alive()
    status, body = out["r"]
    assert status == 529 and body["error"]["type"] == "overloaded_error", body
    assert poll_until(lambda: t.healthz()[0] == 200, timeout=15)


# ------------------------------------------------------------------ raw HTTP


def raw_http(t: TurnoutProcess, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are; everything the server answers until it closes."""
    s = socket.create_connection(("127.0.0.1", t.port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def split(resp: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


# ------------------------------------------------------------------ item 7


def test_non_ascii_api_key_is_a_401(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory()
    for key in ("tést".encode(), b"t\xff\xfe-SECRET-"):
        status, _, body = split(raw_http(t, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + key
                                         + b"\r\nConnection: close\r\n\r\n"))
        assert status == 401 and body["error"]["code"] == "invalid_api_key", body


def test_deeply_nested_json_is_a_400(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory()
    deep = b"[" * 10000 + b"]" * 10000
    for path in ("/v1/messages", "/v1/chat/completions", "/v1/responses", "/v1/messages/count_tokens",
                 "/v1/embeddings"):
        status, body = post(t, path, deep)
        assert status == 400, (path, body)
        assert isinstance(body["error"]["message"], str), (path, body)
    # Deep inside a field the typed decoder keeps as Any.
    nested = (b'{"model": "fake", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], '
              b'"output_config": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}")
    status, body = post(t, "/v1/messages", nested)
    assert status == 400 and "nested" in body["error"]["message"], body
