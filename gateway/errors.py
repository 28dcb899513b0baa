"""API errors, rendered in the shape of the API the client speaks.

Anthropic: ``{"type": "error", "error": {"type": ..., "message": ...}}``.
OpenAI: ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
Permanent errors are never 5xx, so clients do not retry what cannot succeed.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from aiohttp import web

from turnout.protocol.messages import FailKind

ApiShape = Literal["anthropic", "openai"]

# Anthropic error type for each status turnout uses.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    529: "server_error",
}

_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large"}


class ApiError(Exception):
    """An error answer. ``param`` names the offending field when there is one."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.code = code

    def anthropic_type(self) -> str:
        return _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")

    def body(self, shape: ApiShape) -> dict[str, object]:
        if shape == "anthropic":
            return {"type": "error", "error": {"type": self.anthropic_type(), "message": self.message}}
        return {
            "error": {
                "message": self.message,
                "type": _OPENAI_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error"),
                "param": self.param,
                "code": self.code or _OPENAI_CODES.get(self.status),
            }
        }

    def response(self, shape: ApiShape) -> web.Response:
        status = self.status
        if shape == "openai" and status == 529:
            status = 503  # 529 is Anthropic's; OpenAI clients know 503
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return web.Response(
            status=status,
            body=msgspec.json.encode(self.body(shape)),
            content_type="application/json",
            headers=headers,
        )


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise ApiError(400, f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object")
    return body


def check_max_tokens(n: int, limit: int, field: str = "max_tokens") -> None:
    """A 400 naming ``field`` when ``n`` is past the gateway's cap (``server.max_tokens_limit``,
    0: none). Any size is compared: a value beyond 64 bits is an error here, not an
    overflow on the way to a worker."""
    if limit and n > limit:
        shown = str(n) if n < 2**64 else "a number beyond 64 bits"
        raise ApiError(400, f"{field}: {shown} > {limit}, which is the maximum allowed number of output tokens "
                            f"(server.max_tokens_limit)", param=field)


def from_fail(kind: FailKind, message: str) -> ApiError:
    """Map a worker's failure kind onto an API error."""
    if kind in ("invalid_request", "context_overflow"):
        return ApiError(400, message, code="context_length_exceeded" if kind == "context_overflow" else None)
    if kind in ("overloaded", "worker_died"):
        return ApiError(529, message, retry_after=1)
    return ApiError(500, message)


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def validation_error(e: msgspec.ValidationError | msgspec.DecodeError) -> ApiError:
    """Turn msgspec's message into ``field.path: reason`` with ``param`` set.

    msgspec says e.g. "Expected `int`, got `str` - at `$.max_tokens`" or
    "Object missing required field `messages`"."""
    text = str(e)
    if isinstance(e, msgspec.ValidationError):
        mt = _AT.match(text)
        msg = mt.group("msg") if mt else text
        path = (mt.group("path") or "") if mt else ""
        path = re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")
        missing = re.match(r"Object missing required field `([^`]+)`", msg)
        if missing:
            field = f"{path}.{missing.group(1)}" if path else missing.group(1)
            return ApiError(400, f"{field}: Field required", param=field)
        return ApiError(400, f"{path}: {msg}" if path else msg, param=path or None)
    return ApiError(400, f"The request body is not valid JSON: {text}")
