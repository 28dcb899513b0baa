"""The media endpoints, and the same operations as plain functions for MCP tools.

Routes (errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``):

    POST /v1/audio/transcriptions   OpenAI's: multipart ``file`` + ``model``, ``language``,
                                    ``prompt``, ``temperature``, ``response_format``
                                    (json, text, srt, vtt, verbose_json),
                                    ``timestamp_granularities[]``, ``stream`` (SSE)
    POST /v1/audio/speech           OpenAI's: JSON ``model``, ``input``, ``voice``,
                                    ``response_format`` (mp3 default, opus, aac,
                                    flac, wav, pcm), ``speed``,
                                    ``stream_format`` (audio, sse); audio is streamed
                                    sentence by sentence as it is synthesised
    POST /v1/ocr                    image (multipart ``file``, or JSON ``{"image":
                                    base64 or data URL}``) -> text, lines, boxes
    POST /v1/images/upscale         image (multipart ``image``/``file``, or JSON) +
                                    ``scale`` 2|4 -> the image (or ``b64_json``)

Which worker: ``model`` when it names a configured model of the right backend, else
(an OpenAI name such as ``whisper-1`` or ``tts-1``) the first model of that backend;
for speech, a ``voice`` that names a tts model picks it.

Uploads are read here only as bytes, checked against ``[media]`` limits that need no
decoding (size, emptiness, text length), and sent to the worker as an extra ZeroMQ
frame without a copy; the worker decodes them, so a file that crashes a decoder costs
a worker restart, never the gateway.

MCP tools (for the MCP server, which registers them): :func:`ocr_image`,
:func:`transcribe_audio`, :func:`speak_text`, :func:`upscale_image` take a file path
or base64 (a data URL too) and return text or the path of the file they wrote.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import BodyPartReader, web

from gateway.bus import Bus, JobStream
from gateway.errors import ApiError, from_fail, json_object
from gateway.routing import BUS
from protocol import messages as m
from protocol.chat import ChatRequest, ImagePart, Message, TextPart, ToolResultPart
from protocol.config import ModelConfig

log = structlog.get_logger()
_json = msgspec.json.Encoder()

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                "wav": "audio/wav", "pcm": "audio/pcm"}
OPENAI_PCM_RATE = 24000  # OpenAI documents pcm as 24 kHz 16-bit signed little-endian mono

# ISO 639-1 -> the name OpenAI's verbose_json reports.
LANGUAGE_NAMES = {
    "en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "ru": "russian", "zh": "chinese", "ja": "japanese", "ko": "korean", "ar": "arabic",
    "hi": "hindi", "pl": "polish", "tr": "turkish", "uk": "ukrainian", "sv": "swedish", "cs": "czech",
}


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


def _decode_base64(text: str, param: str) -> bytes:
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
        raw = await _read_limited(request.content, limit * 4 // 3 + 65536, limit)
        body = json_object(raw)
        for k, v in body.items():
            if k in base64_fields and isinstance(v, str):
                up.files[k] = _decode_base64(v, k)
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


async def _read_limited(content: Any, limit: int, file_limit: int) -> bytes:
    buf = bytearray()
    while chunk := await content.read(1 << 20):
        buf += chunk
        if len(buf) > limit:
            raise _too_large(file_limit)
    return bytes(buf)


def _need_file(up: Upload, names: tuple[str, ...]) -> bytes:
    for n in names:
        if n in up.files:
            data = up.files[n]
            if not data:
                raise ApiError(400, f"{n}: the uploaded file is empty", param=n)
            return data
    raise ApiError(400, f"{names[0]}: Field required (a file upload)", param=names[0])


def _float(up: Upload, name: str, default: float, lo: float, hi: float) -> float:
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


def _choice(up: Upload, name: str, default: str, allowed: tuple[str, ...]) -> str:
    v = up.get(name, default) or default
    if v not in allowed:
        raise ApiError(400, f"{name}: {v!r} is not supported; use one of {', '.join(allowed)}", param=name)
    return v


def _bool(up: Upload, name: str) -> bool:
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


# ---------------------------------------------------------------- speech to text


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[m.Segment]


async def transcribe(bus: Bus, mc: ModelConfig, audio: bytes, params: m.SttParams) -> Transcript:
    """Transcribe a whole file (any format the worker's decoder reads)."""
    params.max_seconds = params.max_seconds or bus.config.media.max_audio_seconds
    st = await bus.open_job(mc, params, [audio])
    t = Transcript("", "", 0.0, [])
    async for out, _ in job_outputs(st):
        t.segments.extend(out.segments)
        t.language = out.language or t.language
        t.duration = out.duration_s or t.duration
    t.text = "".join(s.text for s in t.segments).strip()
    return t


def _ts(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    mi, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{mi:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[m.Segment]) -> str:
    return "".join(f"{i}\n{_ts(s.start, ',')} --> {_ts(s.end, ',')}\n{s.text.strip()}\n\n"
                   for i, s in enumerate(segments, start=1))


def to_vtt(segments: list[m.Segment]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_ts(s.start, '.')} --> {_ts(s.end, '.')}\n{s.text.strip()}\n\n" for s in segments)


def verbose_json(t: Transcript, words: bool, segments: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(t.language, t.language),
        "duration": t.duration,
        "text": t.text,
    }
    if segments:
        body["segments"] = [
            {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens,
             "temperature": s.temperature, "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
             "no_speech_prob": s.no_speech_prob}
            for s in t.segments
        ]
    if words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} for s in t.segments for w in s.words]
    body["usage"] = _usage(t.duration)
    return body


def _usage(seconds: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": max(0, round(seconds + 0.4999))}  # OpenAI bills whole seconds, rounded up


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + _json.encode(data) + b"\n\n"


@openai_errors
async def transcriptions(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/transcriptions"""
    bus = request.app[BUS]
    up = await read_upload(request, ("file",))
    audio = _need_file(up, ("file",))
    if not up.get("model"):
        raise ApiError(400, "model: Field required", param="model")
    mc = pick_model(bus, "stt", up.get("model"))
    fmt = _choice(up, "response_format", "json", TRANSCRIPTION_FORMATS)
    granularities = up.getall("timestamp_granularities")
    for g in granularities:
        if g not in ("word", "segment"):
            raise ApiError(400, f"timestamp_granularities: {g!r} is not one of word, segment",
                           param="timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise ApiError(400, "timestamp_granularities: needs response_format verbose_json", param="timestamp_granularities")
    params = m.SttParams(language=up.get("language").strip().lower(), prompt=up.get("prompt"),
                         temperature=_float(up, "temperature", 0.0, 0.0, 1.0),
                         word_timestamps="word" in granularities)
    if _bool(up, "stream"):
        if fmt not in ("json", "text"):
            raise ApiError(400, "stream: streaming answers only response_format json or text", param="stream")
        return await _transcribe_stream(request, bus, mc, audio, params)
    t = await transcribe(bus, mc, audio, params)
    if fmt == "text":
        return web.Response(text=t.text + "\n", content_type="text/plain")
    if fmt == "srt":
        return web.Response(text=to_srt(t.segments), content_type="text/plain")
    if fmt == "vtt":
        return web.Response(text=to_vtt(t.segments), content_type="text/vtt")
    if fmt == "verbose_json":
        body = verbose_json(t, "word" in granularities, not granularities or "segment" in granularities)
    else:
        body = {"text": t.text, "usage": _usage(t.duration)}
    return web.Response(body=_json.encode(body), content_type="application/json")


async def _transcribe_stream(request: web.Request, bus: Bus, mc: ModelConfig, audio: bytes,
                             params: m.SttParams) -> web.StreamResponse:
    """OpenAI's streamed transcription: ``transcript.text.delta`` per segment, then
    ``transcript.text.done``. Errors before the first segment are HTTP errors."""
    params.max_seconds = bus.config.media.max_audio_seconds
    st = await bus.open_job(mc, params, [audio])
    outputs = job_outputs(st)
    resp: web.StreamResponse | None = None
    text, duration = "", 0.0
    try:
        async for out, _ in outputs:
            if resp is None:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await resp.prepare(request)
            duration = out.duration_s or duration
            for s in out.segments:
                delta = s.text if text else s.text.lstrip()
                text += delta
                await resp.write(_sse({"type": "transcript.text.delta", "delta": delta}))
        if resp is None:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
        await resp.write(_sse({"type": "transcript.text.done", "text": text, "usage": _usage(duration)}))
    except ApiError as e:
        if resp is None:
            raise
        await resp.write(_sse({"type": "error", "error": e.body("openai")["error"]}))
    finally:
        await outputs.aclose()
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- text to speech


def wav_header(rate: int, data_bytes: int = 0xFFFFFFFF - 36) -> bytes:
    """A 16-bit mono WAV header. Streaming, the length is not known yet: the sizes
    are set to the maximum, which players read as "until the end" (OpenAI's
    streamed wav does the same)."""
    riff = min(0xFFFFFFFF, 36 + data_bytes)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", min(0xFFFFFFFF, data_bytes)))


def _rate(media_type: str) -> int:
    _, _, r = media_type.partition("rate=")
    return int(r) if r.isdigit() else 22050


async def speech_chunks(bus: Bus, mc: ModelConfig, params: m.TtsParams) -> AsyncGenerator[tuple[bytes, int], None]:
    """16-bit mono PCM chunks and their rate, one per sentence, as synthesised."""
    st = await bus.open_job(mc, params, [])
    try:
        async for out, frames in job_outputs(st):
            rate = _rate(out.media_type)
            for f in frames:
                yield f.bytes, rate
    finally:
        if not st.done:  # the consumer stopped early: stop the synthesis too
            st.cancel()


def _tts_model(bus: Bus, model: str, voice: str) -> ModelConfig:
    if voice:
        mc = bus.model_config(voice)
        if mc is not None and mc.backend == "tts":
            return mc
    return pick_model(bus, "tts", model)


@openai_errors
async def speech(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/speech"""
    bus = request.app[BUS]
    limits = bus.config.media
    raw = await _read_limited(request.content, 1 << 20, 1 << 20)
    body = json_object(raw)
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input: Field required (the text to speak)", param="input")
    if len(text) > limits.max_speech_chars:
        raise ApiError(413, f"input: {len(text)} characters; the limit is {limits.max_speech_chars} (media.max_speech_chars)",
                       param="input", code="request_too_large")
    up = Upload(fields={k: [str(v)] for k, v in body.items() if isinstance(v, str | int | float) and k != "input"})
    fmt = _choice(up, "response_format", "mp3", SPEECH_FORMATS)  # OpenAI's default
    stream_format = _choice(up, "stream_format", "audio", ("audio", "sse"))
    speed = _float(up, "speed", 1.0, 0.25, 4.0)
    voice = up.get("voice")
    mc = _tts_model(bus, up.get("model"), voice)
    params = m.TtsParams(text=text, voice=voice, speed=speed, sample_rate=OPENAI_PCM_RATE if fmt == "pcm" else 0,
                         format="" if fmt in ("wav", "pcm") else fmt)
    chunks = speech_chunks(bus, mc, params)
    try:
        # Wait for the first sentence before answering, so that a refusal is an
        # HTTP error status rather than a broken stream.
        try:
            first, rate = await anext(chunks)
        except StopAsyncIteration:
            raise ApiError(400, "input: nothing in the text can be spoken", param="input") from None
        ctype = SPEECH_TYPES[fmt]
        if stream_format == "sse":
            ctype = "text/event-stream"
        resp = web.StreamResponse(headers={"Content-Type": ctype, "Cache-Control": "no-cache",
                                           "X-Sample-Rate": str(rate)})
        await resp.prepare(request)
        total = 0
        if stream_format == "sse":
            head = wav_header(rate) if fmt == "wav" else b""
            await resp.write(_sse({"type": "speech.audio.delta", "audio": base64.b64encode(head + first).decode()}))
            total += len(first)
            async for pcm, _ in chunks:
                total += len(pcm)
                if pcm:  # an encoder may hold a short sentence back for its next frame
                    await resp.write(_sse({"type": "speech.audio.delta", "audio": base64.b64encode(pcm).decode()}))
            await resp.write(_sse({"type": "speech.audio.done",
                                   "usage": {"input_tokens": len(text.split()), "output_tokens": 0,
                                             "total_tokens": len(text.split())}}))
        else:
            await resp.write((wav_header(rate) if fmt == "wav" else b"") + first)
            async for pcm, _ in chunks:
                await resp.write(pcm)
        await resp.write_eof()
        return resp
    finally:
        await chunks.aclose()


# --------------------------------------------------------------------------- OCR


@dataclass
class OcrResult:
    text: str
    pages: list[dict[str, Any]]


async def ocr(bus: Bus, mc: ModelConfig, image: bytes) -> OcrResult:
    limits = bus.config.media
    st = await bus.open_job(mc, m.OcrParams(max_pixels=limits.max_image_pixels, max_pages=limits.max_pages), [image])
    pages: list[dict[str, Any]] = []
    async for out, _ in job_outputs(st):
        pages.append({
            "page": out.pages, "width": out.width, "height": out.height,
            "text": "\n".join(ln.text for ln in out.lines),
            "lines": [{"text": ln.text, "confidence": ln.confidence, "box": ln.box} for ln in out.lines],
        })
    return OcrResult("\n\n".join(p["text"] for p in pages), pages)


@openai_errors
async def ocr_route(request: web.Request) -> web.StreamResponse:
    """POST /v1/ocr"""
    bus = request.app[BUS]
    up = await read_upload(request, ("file", "image"), base64_fields=("file", "image"))
    image = _need_file(up, ("file", "image"))
    mc = pick_model(bus, "ocr", up.get("model"))
    fmt = _choice(up, "response_format", "json", ("json", "text"))
    r = await ocr(bus, mc, image)
    if fmt == "text":
        return web.Response(text=r.text + "\n", content_type="text/plain")
    return web.Response(body=_json.encode({"object": "ocr", "model": mc.name, "text": r.text, "pages": r.pages}),
                        content_type="application/json")


# ----------------------------------------------------------------------- upscale


async def upscale(bus: Bus, mc: ModelConfig, image: bytes, scale: int = 2, output_format: str = "png") -> tuple[bytes, str, int, int]:
    """The upscaled image: bytes, media type, width, height."""
    params = m.UpscaleParams(scale=scale, output_format=output_format, max_pixels=bus.config.media.max_upscale_pixels)
    st = await bus.open_job(mc, params, [image])
    result: tuple[bytes, str, int, int] | None = None
    async for out, frames in job_outputs(st):
        if frames:
            result = (frames[0].bytes if len(frames) == 1 else b"".join(f.bytes for f in frames),
                      out.media_type, out.width, out.height)
    if result is None:
        raise ApiError(500, "the upscale worker answered without an image")
    return result


@openai_errors
async def upscale_route(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/upscale"""
    bus = request.app[BUS]
    up = await read_upload(request, ("image", "file"), base64_fields=("image", "file"))
    image = _need_file(up, ("image", "file"))
    mc = pick_model(bus, "upscale", up.get("model"))
    scale_s = up.get("scale", "2")
    if scale_s not in ("2", "4"):
        raise ApiError(400, f"scale: {scale_s!r} is not supported; use 2 or 4", param="scale")
    out_fmt = _choice(up, "output_format", "png", ("png", "jpeg", "webp"))
    resp_fmt = _choice(up, "response_format", "binary", ("binary", "b64_json"))
    data, media_type, w, h = await upscale(bus, mc, image, int(scale_s), out_fmt)
    if resp_fmt == "b64_json":
        return web.Response(body=_json.encode({"created": int(time.time()), "output_format": out_fmt,
                                               "size": f"{w}x{h}", "data": [{"b64_json": base64.b64encode(data).decode()}]}),
                            content_type="application/json")
    return web.Response(body=data, content_type=media_type, headers={"X-Image-Size": f"{w}x{h}"})


def register_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/audio/transcriptions", transcriptions)
    r.add_post("/v1/audio/speech", speech)
    r.add_post("/v1/ocr", ocr_route)
    r.add_post("/v1/images/upscale", upscale_route)


# ------------------------------------------------------------------ chat images


async def ocr_chat_images(bus: Bus, req: ChatRequest) -> ChatRequest:
    """``req`` with every inline image replaced by its OCR text, for a local model
    that cannot see (``media.ocr_images = true``). An image that cannot be read
    becomes a note saying so, rather than failing the chat request."""
    mc = pick_model(bus, "ocr")

    async def convert(p: ImagePart) -> TextPart:
        if not p.data:
            return TextPart(f"[image at {p.url or 'an unknown place'}: not inline, so not read]")
        try:
            r = await ocr(bus, mc, base64.b64decode(p.data))
        except (ApiError, binascii.Error, ValueError) as e:
            return TextPart(f"[image: could not be read: {getattr(e, 'message', e)}]")
        return TextPart(f"[image, text read by OCR:]\n{r.text}" if r.text else "[image: no text in it]")

    messages: list[Message] = []
    for msg in req.messages:
        parts: list[Any] = []
        for p in msg.content:
            if isinstance(p, ImagePart):
                parts.append(await convert(p))
            elif isinstance(p, ToolResultPart) and any(isinstance(c, ImagePart) for c in p.content):
                inner = [await convert(c) if isinstance(c, ImagePart) else c for c in p.content]
                parts.append(msgspec.structs.replace(p, content=inner))
            else:
                parts.append(p)
        messages.append(msgspec.structs.replace(msg, content=parts))
    return msgspec.structs.replace(req, messages=messages)


# -------------------------------------------------------------------- MCP tools
#
# Plain async functions for the MCP server to register (it holds the bus). Inputs
# are a file path or base64 (a data: URL too); outputs are text, or the path of a
# file written where the caller says (a new temporary file by default).
#
# A caller of these tools is whoever can reach /mcp: a model following a prompt
# injection, say. So paths are confined (issue 14): a file read or written must be,
# once symlinks and ``..`` are resolved, inside one of ``[mcp] media_dirs`` (default:
# the home directory and the system temp directory), with no hidden component below
# it (~/.ssh, ~/.config: where keys live); an output must carry the tool's own
# extension (.wav, .png) and is never written through a symlink.


def media_roots(bus: Bus) -> list[Path]:
    dirs = bus.config.mcp.media_dirs or [str(Path.home()), tempfile.gettempdir()]
    return [Path(d).expanduser().resolve() for d in dirs]


def _confine(bus: Bus, real: Path, given: str, param: str) -> None:
    roots = media_roots(bus)
    for root in roots:
        if real == root or real.is_relative_to(root):
            if any(part.startswith(".") for part in real.relative_to(root).parts):
                raise ApiError(403, f"{param}: {given!r} is or is inside a hidden file or directory, which the media "
                                    f"tools do not read or write", param=param)
            return
    raise ApiError(403, f"{param}: {given!r} is outside the directories the media tools may use "
                        f"({', '.join(str(r) for r in roots)}; [mcp] media_dirs sets them)", param=param)


def _load_input(bus: Bus, value: str, param: str = "input") -> bytes:
    if value.startswith("data:"):
        return _decode_base64(value, param)
    p = Path(value).expanduser()
    if len(value) < 4096 and (os.sep in value or p.suffix or p.exists()):
        real = p.resolve()
        _confine(bus, real, value, param)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise ApiError(400, f"{param}: {value!r} is not a readable file (pass a path or base64)",
                           param=param) from None
        with os.fdopen(fd, "rb") as f:
            try:
                return f.read()
            except IsADirectoryError:
                raise ApiError(400, f"{param}: {value!r} is a directory, not a file", param=param) from None
    return _decode_base64(value, param)


def _output_target(bus: Bus, output_path: str, suffix: str) -> Path | None:
    """Where the caller asked the output to go, checked (see above); None: a new
    temporary file."""
    if not output_path:
        return None
    given = Path(output_path).expanduser()
    if not given.name.lower().endswith(suffix):
        raise ApiError(400, f"output_path: {output_path!r} must end with {suffix}", param="output_path")
    real = given.parent.resolve() / given.name
    _confine(bus, real, output_path, "output_path")
    return real


def _write_output(bus: Bus, output_path: str, suffix: str, data: bytes) -> str:
    """Write ``data`` to :func:`_output_target` (never through a symlink); returns
    the path written."""
    real = _output_target(bus, output_path, suffix)
    if real is None:
        fd, path = tempfile.mkstemp(prefix="turnout-", suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    try:
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise ApiError(400, f"output_path: cannot write {output_path!r}: {e.strerror}", param="output_path") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(real)


async def ocr_image(bus: Bus, image: str, model: str = "") -> str:
    """MCP ``ocr_image``: the text in an image (path or base64)."""
    data = _load_input(bus, image, "image")
    return (await ocr(bus, pick_model(bus, "ocr", model), data)).text


async def transcribe_audio(bus: Bus, audio: str, language: str = "", model: str = "") -> str:
    """MCP ``transcribe_audio``: the text spoken in an audio file (path or base64)."""
    data = _load_input(bus, audio, "audio")
    t = await transcribe(bus, pick_model(bus, "stt", model), data, m.SttParams(language=language))
    return t.text


async def speak_text(bus: Bus, text: str, output_path: str = "", voice: str = "", speed: float = 1.0,
                     model: str = "") -> str:
    """MCP ``speak_text``: speak ``text`` into a WAV file; returns its path."""
    if not text.strip():
        raise ApiError(400, "text: nothing to speak", param="text")
    _output_target(bus, output_path, ".wav")  # refused before any work, not after
    pcm = bytearray()
    rate = 22050
    async for chunk, chunk_rate in speech_chunks(bus, _tts_model(bus, model, voice),
                                                 m.TtsParams(text=text, voice=voice, speed=speed)):
        pcm += chunk
        rate = chunk_rate
    return _write_output(bus, output_path, ".wav", wav_header(rate, len(pcm)) + bytes(pcm))


async def upscale_image(bus: Bus, image: str, scale: int = 2, output_path: str = "", model: str = "") -> str:
    """MCP ``upscale_image``: upscale an image (path or base64) 2x or 4x into a PNG
    file; returns its path."""
    data = _load_input(bus, image, "image")
    _output_target(bus, output_path, ".png")
    data, _, _, _ = await upscale(bus, pick_model(bus, "upscale", model), data, scale, "png")
    return _write_output(bus, output_path, ".png", data)
