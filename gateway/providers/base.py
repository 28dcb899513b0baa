"""What every provider shares: the upstream request, the stream parser contract,
SSE framing, upstream errors and the :class:`CloudSource` that runs one request.

Roles:
    Provider: builds the HTTP request for an endpoint and model, parses the answer
        (``parser()``) and the error bodies (``error()``).
    StreamParser: fed the upstream's SSE events (or one JSON body), returns
        turnout stream messages; ``finish()`` at end of body closes the answer.
    CloudSource: a :class:`gateway.routing.Source` over one upstream request, with
        retries (backoff honouring Retry-After) while nothing has reached the client.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import msgspec
import structlog
from yarl import URL

from turnout.gateway.errors import ApiError
from turnout.gateway.streams import MessageQueue
from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, StopReason, Usage
from turnout.protocol.config import EndpointConfig

log = structlog.get_logger()

_json = msgspec.json.Decoder()


@dataclass
class Upstream:
    """One HTTP request to a provider. ``headers`` hold the key: never log them."""

    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool = True


class UpstreamError(Exception):
    """An upstream refused or failed. ``retryable``: a connection error, 429 or 5xx
    (worth a retry or the next endpoint); ``status``: what the client is answered
    when no retry or fallback helps."""

    def __init__(self, status: int, message: str, *, retryable: bool = False,
                 retry_after: float | None = None, kind: m.FailKind = "internal") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind

    def api_error(self) -> ApiError:
        return ApiError(self.status, self.message, retry_after=self.retry_after)


class StreamParser(Protocol):
    finished: bool

    def feed(self, event: str, data: bytes) -> list[m.StreamMsg]: ...

    def finish(self) -> list[m.StreamMsg]: ...


class Provider(Protocol):
    kind: str

    def build(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
              raw: bytes | None, stream: bool) -> Upstream: ...

    def parser(self, passthrough: bool = False) -> StreamParser:
        """``passthrough``: the client speaks this provider's API (see m.Passthrough)."""
        ...

    def error_message(self, body: bytes) -> str: ...

    def build_count(self, ep: EndpointConfig, model: str, req: ChatRequest, key: str | None,
                    raw: bytes | None) -> Upstream | None:
        """The provider's own token-counting request, or None when it has none."""
        ...

    def parse_count(self, body: bytes) -> int: ...


@functools.lru_cache(maxsize=256)
def env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` (and ``NO_PROXY``) name
    for ``url``, with its credentials, looked up once per URL: aiohttp's
    ``trust_env`` would look it (and ~/.netrc) up in a thread on every request,
    two thread hops on the hot path."""
    u = URL(url)
    proxies = urllib.request.getproxies_environment()
    if not u.host or urllib.request.proxy_bypass_environment(u.host, proxies):  # type: ignore[attr-defined]
        return None, None
    p = proxies.get(u.scheme) or proxies.get("all")
    if not p:
        return None, None
    pu = URL(p if "://" in p else "http://" + p)
    auth = aiohttp.BasicAuth(pu.user or "", pu.password or "") if pu.user else None
    return pu.with_user(None), auth


def mk_done(reason: StopReason, usage: Usage, stop_sequence: str = "") -> m.Done:
    return m.Done("", 0, reason, usage, stop_sequence)


def decode(data: bytes) -> Any:
    return _json.decode(data)


def parse_retry_after(headers: Any, body_hint: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP
    date), or a hint found in the body (Gemini's RetryInfo)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            dt = email.utils.parsedate_to_datetime(ra) if ra else None
            if dt is not None:
                return max(0.0, dt.timestamp() - time.time())
    return body_hint


def error_from_status(status: int, provider: str, endpoint: str, key_name: str, message: str,
                      headers: Any, retry_hint: float | None = None) -> UpstreamError:
    """Map an upstream's HTTP error onto what the client sees. The upstream's own
    words are kept (they say what was wrong), prefixed with who said them, except
    on 401/403 where they may quote part of the key."""
    who = f"{provider} endpoint {endpoint!r}"
    if status in (401, 403):
        return UpstreamError(400, f"{who} rejected its API key (HTTP {status}). Set it with "
                                  f"`turnout keys set {key_name}` and retry.", kind="invalid_request")
    if status == 429:
        return UpstreamError(429, f"{who} is rate limiting: {message}", retryable=True,
                             retry_after=parse_retry_after(headers, retry_hint), kind="overloaded")
    if status >= 500:
        return UpstreamError(529 if status in (503, 529) else 502, f"{who} failed (HTTP {status}): {message}",
                             retryable=True, retry_after=parse_retry_after(headers, retry_hint), kind="overloaded")
    if status == 404:
        return UpstreamError(404, f"{who}: {message}", kind="invalid_request")
    if status == 413:
        return UpstreamError(413, f"{who}: {message}", kind="invalid_request")
    return UpstreamError(400, f"{who}: {message}", kind="invalid_request")


async def sse_batches(content: aiohttp.StreamReader) -> AsyncIterator[list[tuple[str, bytes]]]:
    """The SSE events (event name, data) of a body, grouped by network read so a
    burst becomes one batch. Handles ``\\r\\n``, multi-line data and comments."""
    buf = b""
    event = ""
    data: list[bytes] = []
    async for chunk in content.iter_any():
        buf += chunk
        if b"\n" not in chunk:
            continue
        lines = buf.split(b"\n")
        buf = lines.pop()
        out: list[tuple[str, bytes]] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    out.append((event, b"\n".join(data)))
                event, data = "", []
            elif line.startswith(b"data:"):
                v = line[5:]
                data.append(v[1:] if v.startswith(b" ") else v)
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode()
        if out:
            yield out
    if buf.strip().startswith(b"data:"):
        v = buf.strip()[5:]
        data.append(v[1:] if v.startswith(b" ") else v)
    if data:
        yield [(event, b"\n".join(data))]


@dataclass
class Outcome:
    """What one upstream request did, for telemetry."""

    ok: bool = False
    ttft_s: float | None = None
    output_tokens: int = 0
    gen_s: float = 0.0
    input_tokens: int = 0
    status: int = 0
    cancelled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class CloudSource:
    """One request to one endpoint, as a Source.

    ``wait_first()`` returns once the first message is ready, or raises the
    :class:`ApiError` the client should get: until then nothing has been sent to
    the client, so the caller may still fall back to another endpoint. Retries on
    429/5xx/connection errors happen here, before the first message, waiting as
    Retry-After says (at most ``max_wait_s``; longer: give up, let the caller fall
    back). ``cancel()`` closes the upstream connection at once.
    """

    def __init__(self, rid: str, provider: Provider, ep: EndpointConfig, model: str, req: ChatRequest,
                 key: str | None, raw: bytes | None, http: aiohttp.ClientSession, *,
                 retries: int = 1, backoff_s: float = 0.25, max_wait_s: float = 10.0,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.rid = rid
        self.provider = provider
        self.ep = ep
        self.model = model
        self.req = req
        self.key = key
        self.raw = raw
        self.http = http
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.on_outcome = on_outcome
        self.done = False
        self.queue = MessageQueue()
        self.seq = 0
        self.pushed = False
        self.outcome = Outcome()
        self.t_cancel_ns = 0
        loop = asyncio.get_running_loop()
        self._first: asyncio.Future[None] = loop.create_future()
        self._task = loop.create_task(self._run())

    # ------------------------------------------------------------- Source API

    async def wait_first(self) -> None:
        try:
            await asyncio.shield(self._first)
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def next_batch(self) -> list[m.StreamMsg]:
        return await self.queue.next_batch()

    def cancel(self) -> None:
        if self.t_cancel_ns or self.done:
            return
        self.t_cancel_ns = time.monotonic_ns()
        self._task.cancel()

    # ---------------------------------------------------------------- internals

    def _push(self, msgs: list[m.StreamMsg]) -> None:
        for msg in msgs:
            msg.request_id = self.rid
            msg.seq = self.seq
            self.seq += 1
            if isinstance(msg, m.TERMINAL):
                self.done = True
        self.queue.extend(msgs)
        self.pushed = True
        if not self._first.done():
            self._first.set_result(None)

    def _fail(self, e: UpstreamError) -> None:
        self.outcome.status = self.outcome.status or e.status
        if not self.pushed:
            self.done = True
            if not self._first.done():
                self._first.set_exception(e.api_error())
        else:
            self._push([m.Failed("", 0, e.kind, e.message)])

    async def _run(self) -> None:
        try:
            attempt = 0
            while True:
                try:
                    await self._once()
                    break
                except UpstreamError as e:
                    if self.pushed or not e.retryable or attempt >= self.retries:
                        raise
                    wait = self.backoff_s * (2 ** attempt)
                    if e.retry_after is not None:
                        wait = max(wait, e.retry_after)
                    if wait > self.max_wait_s:
                        raise
                    log.info("upstream_retry", endpoint=self.ep.name, status=e.status, wait_s=round(wait, 3))
                    attempt += 1
                    await asyncio.sleep(wait)
        except UpstreamError as e:
            log.info("upstream_error", endpoint=self.ep.name, model=self.model, status=e.status,
                     retryable=e.retryable)
            self._fail(e)
        except asyncio.CancelledError:
            self.outcome.cancelled = True
            self.done = True
            if not self._first.done():
                self._first.cancel()
            log.info("upstream_cancelled", endpoint=self.ep.name,
                     cancel_ms=round((time.monotonic_ns() - self.t_cancel_ns) / 1e6, 3) if self.t_cancel_ns else None)
            raise
        except Exception as e:  # a bug in a parser: the client gets a clean error
            log.exception("upstream_bug", endpoint=self.ep.name)
            self._fail(UpstreamError(500, f"turnout could not translate {self.ep.name!r}'s answer: {type(e).__name__}"))
        finally:
            if self.on_outcome is not None:
                self.on_outcome(self.outcome)

    async def _once(self) -> None:
        req = self.provider.build(self.ep, self.model, self.req, self.key, self.raw, self.req.stream or True)
        t0 = time.perf_counter()
        o = self.outcome
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.ep.connect_timeout_s,
                                        sock_read=self.ep.timeout_s)
        proxy, proxy_auth = env_proxy(req.url)
        try:
            resp = await self.http.post(req.url, data=req.body, headers=req.headers, timeout=timeout,
                                        proxy=proxy, proxy_auth=proxy_auth)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise UpstreamError(502, f"cannot reach {self.provider.kind} endpoint {self.ep.name!r}: "
                                     f"{type(e).__name__}: {_safe(str(e), self.key)}",
                                retryable=True, kind="overloaded") from None
        try:
            o.status = resp.status
            if resp.status != 200:
                body = await resp.read()
                msg, hint = self.provider.error_message(body), _retry_hint(body)
                raise error_from_status(resp.status, self.provider.kind, self.ep.name, self.ep.key or self.ep.name,
                                        _safe(msg, self.key), resp.headers, hint)
            parser = self.provider.parser(self.req.api == self.provider.kind)
            ctype = resp.headers.get("Content-Type", "")
            if "event-stream" in ctype:
                async for events in sse_batches(resp.content):
                    out: list[m.StreamMsg] = []
                    for ev, data in events:
                        out.extend(parser.feed(ev, data))
                    if out:
                        self._note(out, t0)
                        self._push(out)
                    if parser.finished:
                        # The answer is complete and with the client; read the
                        # body's end (already here) so the connection goes back
                        # to the pool instead of a new one per request.
                        try:
                            await asyncio.wait_for(_drain(resp.content), 1.0)
                        except (TimeoutError, aiohttp.ClientError, OSError):
                            pass  # the answer is whole; the connection is just not reused
                        break
            else:
                out = parser.feed("", await resp.read())
                if out:
                    self._note(out, t0)
                    self._push(out)
            if not self.done:
                tail = parser.finish()
                self._note(tail, t0)
                self._push(tail)
            o.ok = True
            o.gen_s = time.perf_counter() - t0 - (o.ttft_s or 0)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise UpstreamError(502, f"{self.provider.kind} endpoint {self.ep.name!r} dropped the connection: "
                                     f"{type(e).__name__}", retryable=True, kind="overloaded") from None
        finally:
            # Closing (not releasing) drops the connection: an unfinished answer
            # stops at the upstream at once instead of streaming into a pool.
            if not self.done or self.outcome.cancelled:
                resp.close()
            else:
                resp.release()

    def _note(self, msgs: list[m.StreamMsg], t0: float) -> None:
        o = self.outcome
        for msg in msgs:
            if o.ttft_s is None and isinstance(msg, m.TextDelta | m.ThinkingDelta | m.ToolCallStart):
                o.ttft_s = time.perf_counter() - t0
            elif isinstance(msg, m.Done):
                o.output_tokens = msg.usage.output_tokens
                o.input_tokens = msg.usage.input_tokens + msg.usage.cache_read_input_tokens


async def _drain(content: aiohttp.StreamReader) -> None:
    async for _ in content.iter_any():
        pass


async def count_upstream(http: aiohttp.ClientSession, provider: Provider, ep: EndpointConfig, model: str,
                         req: ChatRequest, key: str | None, raw: bytes | None) -> int | None:
    """Input tokens as the upstream itself counts them (Anthropic's count_tokens,
    Gemini's countTokens); None when the provider has no such call or it failed
    (the caller estimates instead: a count is advice, not worth an error)."""
    up = provider.build_count(ep, model, req, key, raw)
    if up is None:
        return None
    proxy, proxy_auth = env_proxy(up.url)
    timeout = aiohttp.ClientTimeout(total=min(ep.timeout_s, 30.0), sock_connect=ep.connect_timeout_s)
    try:
        async with http.post(up.url, data=up.body, headers=up.headers, timeout=timeout,
                             proxy=proxy, proxy_auth=proxy_auth) as resp:
            body = await resp.read()
            if resp.status != 200:
                log.info("upstream_count_failed", endpoint=ep.name, status=resp.status,
                         message=_safe(provider.error_message(body), key)[:200])
                return None
            return provider.parse_count(body)
    except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, KeyError, TypeError, ValueError) as e:
        log.info("upstream_count_failed", endpoint=ep.name, error=type(e).__name__)
        return None


def _safe(text: str, key: str | None) -> str:
    """Never let a key through in a message, even one an upstream echoed."""
    if key and len(key) >= 4:
        text = text.replace(key, "[key]")
    return text[:2000]


def _retry_hint(body: bytes) -> float | None:
    """Gemini says how long to wait inside the body (google.rpc.RetryInfo)."""
    if b"retryDelay" not in body:
        return None
    try:
        err = decode(body)
        if isinstance(err, list) and err:
            err = err[0]
        for d in err.get("error", {}).get("details", []):
            delay = d.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return float(delay[:-1])
    except (msgspec.DecodeError, AttributeError, ValueError, TypeError):
        pass
    return None


class StaticSource:
    """A Source whose messages are known up front (a token count estimate)."""

    def __init__(self, msgs: list[m.StreamMsg]) -> None:
        self.msgs = msgs
        self.done = False

    async def next_batch(self) -> list[m.StreamMsg]:
        self.done = True
        out, self.msgs = self.msgs, []
        return out

    def cancel(self) -> None:
        self.done = True
