"""What every media route shares: picking the worker's model, reading uploads
within ``[media]`` limits, job outputs, errors in OpenAI's shape."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from aiohttp import BodyPartReader, web

from turnout.gateway.appkeys import BUS
from turnout.gateway.bus import Bus
from turnout.gateway.dispatch import JobStream
from turnout.gateway.errors import ApiError, from_fail, json_object
from turnout.protocol import messages as m
from turnout.protocol.config import ModelConfig

log = structlog.get_logger()
_json = msgspec.json.Encoder()


# ------------------------------------------------------------------------- plumbing


def media_error(kind: m.FailKind, message: str) -> ApiError:
    """A worker's failure as an API error: over a limit is 413, bad input 400."""
    # Worker messages start with the field they are about ("file: ..."): OpenAI's
    # error names it in ``param``.
    field = re.match(r"^(\w+): ", message)
    if kind == "too_large":
        return ApiError(413, message, code="request_too_large", param=field and field.group(1))
    e = from_fail(kind, message)
    if e.status == 400 and field:
        e.param = field.group(1)
    return e


def pick_model(bus: Bus, backend: str, name: str = "", *, param: str = "model") -> ModelConfig:
    """The model of ``backend`` that ``name`` names, else the first of that backend.

    A name of another backend is an error (a chat model cannot transcribe); an
    unknown name falls back, because OpenAI clients send their own model names."""
    if name:
        mc = bus.model_config(name)
        if mc is not None:
            if mc.backend != backend:
                raise ApiError(400, f"{param}: {name!r} is a {mc.backend} model, not a {backend} model", param=param)
            return mc
    for mc in bus.config.models:
        if mc.backend == backend:
            return mc
    raise ApiError(404, f"no {backend} model is configured: add a [[models]] entry with backend = \"{backend}\" "
                        "to turnout's config", param=param, code="model_not_found")


async def job_outputs(st: JobStream) -> AsyncGenerator[tuple[m.JobOutput, list[Any]], None]:
    """The outputs of a job with their frames, in order, until ``Done``; a ``Failed``
    raises the matching API error. Cancels the job if the consumer stops early (the
    client went away, or the handler was cancelled)."""
    try:
        while True:
            for msg in await st.next_batch():
                if isinstance(msg, m.JobOutput):
                    yield msg, st.frames(msg)
                elif isinstance(msg, m.Failed):
                    raise media_error(msg.kind, msg.message)
                elif isinstance(msg, m.Done):
                    if msg.stop_reason == "cancelled":
                        raise ApiError(499, "the job was cancelled")
                    return
    finally:
        if not st.done:
            st.cancel()


def decode_base64(text: str, param: str) -> bytes:
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise ApiError(400, f"{param}: only base64 data URLs are supported", param=param)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: not valid base64 (send the file itself as multipart, or base64 / a data: URL)",
                       param=param) from None


@dataclass
class Upload:
    """A request's fields: ``files`` by field name (bytes), the rest as strings."""

    files: dict[str, bytes] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        v = self.fields.get(name)
        return v[-1] if v else default

    def getall(self, name: str) -> list[str]:
        return self.fields.get(name, []) + self.fields.get(f"{name}[]", [])


def _upload_limit(request: web.Request) -> int:
    return int(request.app[BUS].config.media.max_upload_mb * 1024 * 1024)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"file: the upload is larger than {limit} bytes (media.max_upload_mb)", param="file",
                    code="request_too_large")


async def read_upload(request: web.Request, file_fields: tuple[str, ...], base64_fields: tuple[str, ...] = ()) -> Upload:
    """Read a multipart form (or, when ``base64_fields`` are given, a JSON body whose
    ``base64_fields`` hold base64 files), enforcing ``media.max_upload_mb`` on the
    file as it streams in, so an oversized upload is refused without being stored."""
    limit = _upload_limit(request)
    up = Upload()
    ctype = request.content_type
    if ctype == "application/json" and base64_fields:
        # base64 is 4/3 of the file; the JSON envelope is small.
        if request.content_length is not None and request.content_length > limit * 4 // 3 + 65536:
            raise _too_large(limit)
        raw = await read_limited(request.content, limit * 4 // 3 + 65536, limit)
        body = json_object(raw)
        for k, v in body.items():
            if k in base64_fields and isinstance(v, str):
                up.files[k] = decode_base64(v, k)
                if len(up.files[k]) > limit:
                    raise _too_large(limit)
            elif isinstance(v, list):
                up.fields[k] = [str(x) for x in v]
            elif v is not None:
                up.fields[k] = [str(v).lower() if isinstance(v, bool) else str(v)]
        return up
    if ctype != "multipart/form-data":
        want = "multipart/form-data" + (" or application/json" if base64_fields else "")
        raise ApiError(400, f"Content-Type must be {want} (got {ctype or 'none'})")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader):  # a nested multipart is skipped
                name = part.name or ""
                if name in file_fields or part.filename is not None:
                    buf = bytearray()
                    while chunk := await part.read_chunk(1 << 20):
                        buf += chunk
                        if len(buf) > limit:
                            raise _too_large(limit)
                    up.files[name] = bytes(buf)
                else:
                    value = await part.text()
                    if len(value) > 1 << 20:
                        raise ApiError(413, f"{name}: form field larger than 1 MiB", param=name)
                    up.fields.setdefault(name, []).append(value)
    except ApiError:
        raise
    except (ValueError, AssertionError, RuntimeError) as e:
        raise ApiError(400, f"cannot read the multipart form: {e}") from None
    return up


async def read_limited(content: Any, limit: int, file_limit: int) -> bytes:
    buf = bytearray()
    while chunk := await content.read(1 << 20):
        buf += chunk
        if len(buf) > limit:
            raise _too_large(file_limit)
    return bytes(buf)


def need_file(up: Upload, names: tuple[str, ...]) -> bytes:
    for n in names:
        if n in up.files:
            data = up.files[n]
            if not data:
                raise ApiError(400, f"{n}: the uploaded file is empty", param=n)
            return data
    raise ApiError(400, f"{names[0]}: Field required (a file upload)", param=names[0])


def form_float(up: Upload, name: str, default: float, lo: float, hi: float) -> float:
    raw = up.get(name)
    if raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(400, f"{name}: {raw!r} is not a number", param=name) from None
    if not lo <= v <= hi:
        raise ApiError(400, f"{name}: {v:g} is out of range {lo:g}..{hi:g}", param=name)
    return v


def form_choice(up: Upload, name: str, default: str, allowed: tuple[str, ...]) -> str:
    v = up.get(name, default) or default
    if v not in allowed:
        raise ApiError(400, f"{name}: {v!r} is not supported; use one of {', '.join(allowed)}", param=name)
    return v


def form_bool(up: Upload, name: str) -> bool:
    return up.get(name, "false").strip().lower() in ("1", "true", "yes", "on")


def openai_errors(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Render errors in OpenAI's shape: these endpoints are OpenAI's (or modelled on
    them), whatever shape the app's middleware picks for unknown paths."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            if e.status == 499:  # client gone: nobody reads the answer
                return web.Response(status=499)
            return e.response("openai")

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped
