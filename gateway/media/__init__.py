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

Modules: ``common`` (uploads, limits, errors), ``audio`` (speech both ways),
``images`` (OCR, upscale, chat images), ``tools`` (for the MCP server).
"""

from __future__ import annotations

from aiohttp import web

from turnout.gateway.media.audio import (
    LANGUAGE_NAMES,
    SPEECH_FORMATS,
    SPEECH_TYPES,
    TRANSCRIPTION_FORMATS,
    Transcript,
    speech,
    speech_chunks,
    to_srt,
    to_vtt,
    transcribe,
    transcriptions,
    verbose_json,
    wav_header,
)
from turnout.gateway.media.common import (
    job_outputs,
    media_error,
    openai_errors,
    pick_model,
    read_upload,
)
from turnout.gateway.media.images import (
    OcrResult,
    ocr,
    ocr_chat_images,
    ocr_route,
    upscale,
    upscale_route,
)
from turnout.gateway.media.tools import (
    media_roots,
    ocr_image,
    speak_text,
    transcribe_audio,
    upscale_image,
)

__all__ = [
    "LANGUAGE_NAMES", "SPEECH_FORMATS", "SPEECH_TYPES", "TRANSCRIPTION_FORMATS", "OcrResult", "Transcript",
    "job_outputs", "media_error", "media_roots", "ocr", "ocr_chat_images", "ocr_image", "ocr_route",
    "openai_errors", "pick_model", "read_upload", "register_routes", "speak_text", "speech", "speech_chunks",
    "to_srt", "to_vtt", "transcribe", "transcribe_audio", "transcriptions", "upscale", "upscale_image",
    "upscale_route", "verbose_json", "wav_header",
]


def register_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/audio/transcriptions", transcriptions)
    r.add_post("/v1/audio/speech", speech)
    r.add_post("/v1/ocr", ocr_route)
    r.add_post("/v1/images/upscale", upscale_route)
