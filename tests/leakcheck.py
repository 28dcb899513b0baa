"""Suite-wide secret check: every response the test process receives, and every
log turnout writes, searched for test keys and API tokens.

Every test provider key contains ``KEY_MARKER`` (tests/upstreams/fake.py and the
tests' own bad keys), so one search finds them all. Responses are seen where the
HTTP clients the tests use read them: httpx2 (the anthropic, openai and mcp SDKs;
httpx too where installed),
http.client (urllib, requests) and aiohttp, headers and bodies. Logs are the
``turnout.log`` of every TurnoutProcess the session started, searched for the
marker and for that process's own API token. ``tests/test_zz_leaks.py`` runs last
and fails on any hit.
"""

from __future__ import annotations

import http.client
import importlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.streams

from turnout.supervisor.launch import TurnoutProcess

KEY_MARKER = b"-SECRET-"


@dataclass
class Record:
    scanned_bytes: int = 0
    hits: list[str] = field(default_factory=list)  # where a marker was seen
    processes: list[TurnoutProcess] = field(default_factory=list)
    _tails: dict[int, bytes] = field(default_factory=dict)

    def feed(self, owner: object, data: bytes | bytearray | memoryview, where: str) -> None:
        """One more piece of the response ``owner``; the previous piece's tail is
        kept so a marker split across two reads is still found."""
        if not data:
            return
        b = bytes(data)
        self.scanned_bytes += len(b)
        key = id(owner)
        joined = self._tails.get(key, b"") + b
        if KEY_MARKER in joined:
            i = joined.index(KEY_MARKER)
            self.hits.append(f"{where}: ...{joined[max(0, i - 60):i + 40]!r}...")
        if len(self._tails) > 4096:
            self._tails.clear()
        self._tails[key] = joined[-(len(KEY_MARKER) - 1):]


RECORD = Record()


def _headers(pairs: Any, owner: object, where: str) -> None:
    for k, v in pairs:
        RECORD.feed(owner, (k if isinstance(k, bytes) else str(k).encode()) + b": "
                    + (v if isinstance(v, bytes) else str(v).encode()), where + " header")


def _wrap_httpx(httpx: Any) -> None:
    class SyncTee(httpx.SyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any, where: str) -> None:
            self.inner, self.where = inner, where

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                RECORD.feed(self, chunk, self.where)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    class AsyncTee(httpx.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any, where: str) -> None:
            self.inner, self.where = inner, where

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                RECORD.feed(self, chunk, self.where)
                yield chunk

        async def aclose(self) -> None:
            await self.inner.aclose()

    sync_handle = httpx.HTTPTransport.handle_request

    def handle_request(self: Any, request: Any) -> Any:
        resp = sync_handle(self, request)
        where = f"{httpx.__name__} {request.method} {request.url}"
        _headers(resp.headers.raw, resp, where)
        resp.stream = SyncTee(resp.stream, where)
        return resp

    async_handle = httpx.AsyncHTTPTransport.handle_async_request

    async def handle_async_request(self: Any, request: Any) -> Any:
        resp = await async_handle(self, request)
        where = f"{httpx.__name__} {request.method} {request.url}"
        _headers(resp.headers.raw, resp, where)
        resp.stream = AsyncTee(resp.stream, where)
        return resp

    httpx.HTTPTransport.handle_request = handle_request
    httpx.AsyncHTTPTransport.handle_async_request = handle_async_request


def install() -> None:
    """Wrap the HTTP clients' read paths and TurnoutProcess.start (once per session)."""
    if getattr(install, "done", False):
        return
    install.done = True  # type: ignore[attr-defined]

    for name in ("httpx2", "httpx"):
        try:
            _wrap_httpx(importlib.import_module(name))
        except ImportError:
            pass

    # http.client: urllib and requests (through urllib3) read bodies with these.
    begin = http.client.HTTPResponse.begin

    def begin_(self: http.client.HTTPResponse) -> None:
        begin(self)
        _headers(self.getheaders(), self, "http.client")

    http.client.HTTPResponse.begin = begin_  # type: ignore[method-assign]
    for name in ("read", "read1", "readline", "peek"):
        orig = getattr(http.client.HTTPResponse, name)

        def reader(self: http.client.HTTPResponse, *a: Any, _orig: Any = orig, **kw: Any) -> bytes:
            out: bytes = _orig(self, *a, **kw)
            RECORD.feed(self, out, "http.client")
            return out

        setattr(http.client.HTTPResponse, name, reader)
    readinto = http.client.HTTPResponse.readinto

    def readinto_(self: http.client.HTTPResponse, b: Any) -> int:
        n = readinto(self, b)
        RECORD.feed(self, memoryview(b)[:n], "http.client")
        return n

    http.client.HTTPResponse.readinto = readinto_  # type: ignore[method-assign]

    # aiohttp: every body byte a client response gets passes through feed_data.
    feed_data = aiohttp.streams.StreamReader.feed_data

    def feed_data_(self: aiohttp.streams.StreamReader, data: bytes, *a: Any, **kw: Any) -> Any:
        RECORD.feed(self, data, "aiohttp")
        return feed_data(self, data, *a, **kw)

    aiohttp.streams.StreamReader.feed_data = feed_data_  # type: ignore[method-assign,assignment]
    start_headers = aiohttp.ClientResponse.start

    async def start(self: aiohttp.ClientResponse, *a: Any, **kw: Any) -> aiohttp.ClientResponse:
        out = await start_headers(self, *a, **kw)
        _headers(self.raw_headers, self, f"aiohttp {self.method} {self.url}")
        return out

    aiohttp.ClientResponse.start = start  # type: ignore[method-assign]

    start_process = TurnoutProcess.start

    def start_(self: TurnoutProcess, *a: Any, **kw: Any) -> TurnoutProcess:
        RECORD.processes.append(self)
        return start_process(self, *a, **kw)

    TurnoutProcess.start = start_  # type: ignore[method-assign]


def log_hits() -> list[str]:
    """Every turnout log of the session holding a test key or its own API token."""
    out = []
    for p in RECORD.processes:
        text = p.log_path.read_bytes() if p.log_path.exists() else b""
        for secret, what in ((KEY_MARKER, "a test key"), (p.token.encode(), "its API token")):
            if secret in text:
                i = text.index(secret)
                out.append(f"{p.log_path} holds {what}: ...{text[max(0, i - 80):i + 40]!r}...")
    return out
