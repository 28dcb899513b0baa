"""What stands between the network and the routes (issue 14): connection limits,
header and idle timeouts, HTTP-level errors in the API's shape, Host and Origin.

* :class:`GuardedRunner` runs the app like ``web.AppRunner``, with connections that
  (a) must deliver a request's head within ``header_timeout_s`` of its first byte
  (or of connecting), so a slowloris client cannot hold a connection by trickling
  headers; (b) are closed after ``idle_timeout_s`` idle between requests
  (keep-alive); (c) number at most ``max_connections``: past it, the connection
  idle or waiting for its head the longest is closed to make room (slow ones go
  first), else the oldest still sending its request's body (slow POSTs); a request
  being answered is never cut, and if every connection holds one, the new one is
  closed. aiohttp has no header timeout of its own: its
  keep-alive timer starts at connect and is not reset by bytes.
* aiohttp's own answers to requests it cannot parse (a NUL in a header, a bad
  request line, broken framing) were ``text/plain`` echoing the offending bytes,
  and their traceback, holding them, went to the log: here they are answered in the
  API's error shape without echoing anything, and logged as one JSON line with the
  error's class only.
* :func:`host_origin_middleware`: on a loopback bind, the ``Host`` must be a
  loopback name or address (or one of ``allowed_hosts``): a DNS-rebinding page
  reaches 127.0.0.1 under its own name, and is refused (Ollama's fix for
  CVE-2024-28224 is the precedent). On any bind, a request with an ``Origin`` (a
  browser's) is refused unless it is the gateway's own origin or one of
  ``cors_origins``, which are also the only origins CORS headers are sent to. The
  MCP Streamable HTTP transport requires this Origin check.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from turnout.gateway.errors import ApiError, ApiShape

log = structlog.get_logger()


@dataclass(frozen=True)
class HttpLimits:
    """``[server]``'s connection limits; 0 turns one off."""

    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    max_connections: int = 2048


def api_shape(path: str, headers: Any = None) -> ApiShape:
    """The error shape a path's clients expect (OpenAI's for its routes)."""
    if path.startswith(("/v1/chat", "/v1/responses", "/v1/embeddings", "/v1/audio", "/v1/ocr", "/v1/images")) or (
        path.startswith("/v1/models") and (headers is None or "anthropic-version" not in headers)
    ):
        return "openai"
    return "anthropic"


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with a header deadline and errors in the API's
    shape. State: ``_head_handle`` is armed while the connection waits for a
    request's head (from connecting, or from the first byte of the next request)."""

    def __init__(self, manager: GuardedServer, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self._guard = manager
        self._head_handle: asyncio.TimerHandle | None = None
        self.waiting_since = 0.0  # when it last became idle or started waiting for a head

    @property
    def busy(self) -> bool:
        """Serving a request (its head is in)."""
        return bool(self._request_in_progress or self._messages)

    @property
    def receiving(self) -> bool:
        """Its request's body is still arriving (a slow upload, or a slow-POST attack)."""
        r = self._current_request
        return r is not None and not r.content.is_eof()

    def _arm_head_deadline(self) -> None:
        t = self._guard.limits.header_timeout_s
        if t > 0 and self._head_handle is None:
            self._head_handle = self._loop.call_later(t, self._head_overdue)

    def _disarm_head_deadline(self) -> None:
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None

    def _head_overdue(self) -> None:
        self._head_handle = None
        if self.busy or self.transport is None:
            return
        self._guard.timeouts += 1
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.waiting_since = self._loop.time()
        self._arm_head_deadline()
        self._guard.admit(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_deadline()
        self._guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm_head_deadline()  # a whole head arrived
        elif data and not self.busy and self._head_handle is None:
            self._arm_head_deadline()  # the first bytes of the next request's head

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            # Idle again: what follows is the keep-alive timer's, until bytes come.
            self._disarm_head_deadline()
            self.waiting_since = self._loop.time()
            self._guard.touch(self)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse, or to an error that
        escaped every handler: in the API's shape, echoing nothing of the request,
        logged as one line with the error's class (its message quotes the request)."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        kind = type(exc).__name__ if exc is not None else ""
        if status < 500:
            log.warning("bad_http_request", status=status, error=kind)
            text = "malformed HTTP request: its request line, a header or its framing could not be parsed"
        else:
            log.error("http_error", status=status, error=kind)
            text = "internal error in turnout; see its log for details"
        resp = ApiError(status, text).response(api_shape(getattr(request, "path", "/")))
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp's own tracebacks can hold the request's bytes: the class only.
        exc = kw.get("exc_info")
        log.error("http_internal_error", message=str(args[0]) if args else "",
                  error=type(exc).__name__ if isinstance(exc, BaseException) else "")


class GuardedServer(web.Server):
    """aiohttp's Server, making :class:`GuardedHandler` connections and keeping
    them under ``limits.max_connections`` (oldest idle or head-waiting first)."""

    def __init__(self, inner: web.Server, limits: HttpLimits) -> None:
        self.__dict__.update(inner.__dict__)  # the same handler, factory and options
        self.limits = limits
        self._order: OrderedDict[GuardedHandler, None] = OrderedDict()
        self.timeouts = 0
        self.evicted = 0
        self.refused = 0

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, h: GuardedHandler) -> None:
        self._order[h] = None
        cap = self.limits.max_connections
        if cap <= 0 or len(self._order) <= cap:
            return
        # Over the cap: close the connection that has waited longest without a
        # request in progress; failing that, the oldest one still receiving its
        # request's body (a request being answered is never cut). Busy ones are
        # moved to the back as they are met.
        uploading: GuardedHandler | None = None
        for _ in range(len(self._order)):
            old = next(iter(self._order))
            self._order.move_to_end(old)
            if old is h:
                continue
            if old.busy:
                if uploading is None and old.receiving:
                    uploading = old
                continue
            del self._order[old]
            self.evicted += 1
            old.force_close()
            return
        if uploading is not None:
            del self._order[uploading]
            self.evicted += 1
            uploading.force_close()
            return
        self.refused += 1
        del self._order[h]
        h.force_close()
        if self.refused % 1000 == 1:  # not once per connection under a flood
            log.warning("connection_refused", reason="every connection is serving a request",
                        max_connections=cap, refused=self.refused)

    def touch(self, h: GuardedHandler) -> None:
        if h in self._order:
            self._order.move_to_end(h)

    def forget(self, h: GuardedHandler) -> None:
        self._order.pop(h, None)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`GuardedServer`; the idle
    (keep-alive) timeout is aiohttp's ``keepalive_timeout``."""

    def __init__(self, app: web.Application, limits: HttpLimits, **kw: Any) -> None:
        if limits.idle_timeout_s > 0:
            kw["keepalive_timeout"] = limits.idle_timeout_s
        super().__init__(app, **kw)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self.limits)


# ----------------------------------------------------------------- Host, Origin


def _split_host(value: str) -> str:
    """The host of a Host header (no port, no brackets), lower-cased."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    if v.count(":") == 1:
        return v.split(":", 1)[0]
    return v


def _is_loopback_name(host: str) -> bool:
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_bind(host: str) -> bool:
    return _is_loopback_name(_split_host(host)) if host else False


@dataclass
class OriginPolicy:
    """Options:
        check_host: refuse a Host that is not loopback (the gateway is bound to loopback).
        allowed_hosts: extra Host names (globs) allowed (``"*"``: any).
        cors_origins: origins allowed to call from a browser, answered with CORS
            headers (``"*"``: any).
    """

    check_host: bool
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    # Host headers already judged: a client sends the same one on every request,
    # and the check (an IP parse, globs) is on every request's path.
    _judged: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    def host_ok(self, host_header: str | None) -> bool:
        if not self.check_host or host_header is None:
            return True  # HTTP/1.0 without Host: nothing to rebind
        ok = self._judged.get(host_header)
        if ok is None:
            host = _split_host(host_header)
            ok = _is_loopback_name(host) or any(fnmatch.fnmatchcase(host, g.lower()) for g in self.allowed_hosts)
            if len(self._judged) >= 256:  # bounded: a client can send any Host
                self._judged.clear()
            self._judged[host_header] = ok
        return ok

    def origin_ok(self, origin: str, host_header: str | None) -> bool:
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        # The gateway's own origin: same host and port as the request was sent to.
        try:
            u = URL(origin)
        except ValueError:
            return False
        if not u.host or u.scheme not in ("http", "https"):
            return False
        own = (host_header or "").strip().lower()
        port = u.explicit_port
        authority = f"[{u.host}]" if ":" in u.host else u.host
        return bool(own) and own == (f"{authority}:{port}" if port else authority) and self.host_ok(own)

    def cors(self, origin: str) -> bool:
        return origin in self.cors_origins or "*" in self.cors_origins


_CORS_HEADERS = "authorization, x-api-key, content-type, anthropic-version, anthropic-beta, mcp-session-id, " \
                "mcp-protocol-version, last-event-id, openai-organization, openai-project, x-stainless-*"


def screen(request: web.Request, policy: OriginPolicy) -> web.StreamResponse | None:
    """The Host and Origin checks, before routing and auth: a 403 for a request
    that fails one, the answer to an allowed origin's CORS preflight (a browser
    sends it without the token), else None (carry on)."""
    host = request.headers.get("Host")
    if not policy.host_ok(host):
        log.warning("host_refused")
        return ApiError(403, "the Host header names no host this gateway answers to: bound to loopback, it answers "
                             "to localhost and loopback addresses (add names to server.allowed_hosts)").response(
            api_shape(request.path, request.headers))
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if not policy.origin_ok(origin, host):
        log.warning("origin_refused")
        return ApiError(403, "requests from web pages of other origins are refused (allow an origin with "
                             "server.cors_origins)").response(api_shape(request.path, request.headers))
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers and policy.cors(origin):
        resp = web.Response(status=204)
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers",
                                                                           _CORS_HEADERS)
        resp.headers["Access-Control-Max-Age"] = "600"
        return resp
    return None


def cors_on_prepare(policy: OriginPolicy) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` signal adding CORS headers for an allowed origin
    (streamed responses too: their headers leave before any middleware sees them)."""

    async def add(request: web.Request, resp: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and policy.cors(origin):
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
            resp.headers["Access-Control-Expose-Headers"] = "request-id, retry-after, mcp-session-id"

    return add
