"""Speech to text (``/v1/audio/transcriptions``) and text to speech
(``/v1/audio/speech``)."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from aiohttp import web

from turnout.gateway.appkeys import BUS
from turnout.gateway.bus import Bus
from turnout.gateway.errors import ApiError, json_object
from turnout.gateway.media.common import (
    Upload,
    form_bool,
    form_choice,
    form_float,
    job_outputs,
    need_file,
    openai_errors,
    pick_model,
    read_limited,
    read_upload,
)
from turnout.protocol import messages as m
from turnout.protocol.config import ModelConfig

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
    audio = need_file(up, ("file",))
    if not up.get("model"):
        raise ApiError(400, "model: Field required", param="model")
    mc = pick_model(bus, "stt", up.get("model"))
    fmt = form_choice(up, "response_format", "json", TRANSCRIPTION_FORMATS)
    granularities = up.getall("timestamp_granularities")
    for g in granularities:
        if g not in ("word", "segment"):
            raise ApiError(400, f"timestamp_granularities: {g!r} is not one of word, segment",
                           param="timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise ApiError(400, "timestamp_granularities: needs response_format verbose_json", param="timestamp_granularities")
    params = m.SttParams(language=up.get("language").strip().lower(), prompt=up.get("prompt"),
                         temperature=form_float(up, "temperature", 0.0, 0.0, 1.0),
                         word_timestamps="word" in granularities)
    if form_bool(up, "stream"):
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


def tts_model(bus: Bus, model: str, voice: str) -> ModelConfig:
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
    raw = await read_limited(request.content, 1 << 20, 1 << 20)
    body = json_object(raw)
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input: Field required (the text to speak)", param="input")
    if len(text) > limits.max_speech_chars:
        raise ApiError(413, f"input: {len(text)} characters; the limit is {limits.max_speech_chars} (media.max_speech_chars)",
                       param="input", code="request_too_large")
    up = Upload(fields={k: [str(v)] for k, v in body.items() if isinstance(v, str | int | float) and k != "input"})
    fmt = form_choice(up, "response_format", "mp3", SPEECH_FORMATS)  # OpenAI's default
    stream_format = form_choice(up, "stream_format", "audio", ("audio", "sse"))
    speed = form_float(up, "speed", 1.0, 0.25, 4.0)
    voice = up.get("voice")
    mc = tts_model(bus, up.get("model"), voice)
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
