"""The parameters of a job (:class:`~protocol.messages.Job`), one typed struct per
kind of worker: media (ocr, stt, tts, upscale, embed) and browser actions."""

from __future__ import annotations

from typing import Literal

import msgspec

# Media jobs (ocr, stt, tts, upscale). The parameters of each kind are a typed struct;
# the input (an image or an audio file, as uploaded) is never inside the msgpack
# frame: it travels as ``n_frames`` extra ZeroMQ frames after it, sent and received
# without copying. Limits ride along with the job, so the gateway's config is the one
# source of truth and a worker needs no config of its own to enforce them.


class _Params(msgspec.Struct, tag_field="k", omit_defaults=True):
    pass


class OcrParams(_Params, tag="ocr"):
    max_pixels: int = 0  # 0: no limit; per page
    max_pages: int = 0


class SttParams(_Params, tag="stt"):
    language: str = ""  # ISO 639-1; "" detects (multilingual models)
    prompt: str = ""
    temperature: float = 0.0
    word_timestamps: bool = False
    max_seconds: float = 0.0  # 0: no limit


class TtsParams(_Params, tag="tts"):
    text: str = ""
    voice: str = ""
    speed: float = 1.0  # OpenAI's 0.25..4.0; Piper's length_scale is 1/speed
    sample_rate: int = 0  # 0: the voice's own rate; else resampled (OpenAI pcm: 24000)
    format: str = ""  # "": 16-bit PCM frames; mp3 | opus | aac | flac: encoded by the worker


class UpscaleParams(_Params, tag="upscale"):
    scale: int = 2
    output_format: str = "png"  # png | jpeg | webp
    max_pixels: int = 0  # input pixels; 0: no limit


class EmbedParams(_Params, tag="embed"):
    texts: list[str] = msgspec.field(default_factory=list)


BrowserAction = Literal["navigate", "snapshot", "click", "type", "select", "press", "wait_for", "screenshot",
                        "evaluate", "tabs", "close"]


class BrowserParams(_Params, tag="browser"):
    """One browser action (issue 18) for the ``browser`` worker, in the browser context
    of ``session`` (one per MCP session). The ``[browser]`` settings ride along, as
    the media limits do: ``allow`` (URL globs; []: any http(s)), ``evaluate``,
    ``timeout_s`` (the action's bound), ``executable`` ("" : found on PATH),
    ``max_sessions``. Answered by ``JobOutput`` messages whose ``text`` is the
    result (a screenshot's PNG as a frame), then ``Done``."""

    action: BrowserAction = "snapshot"
    session: str = ""
    url: str = ""
    ref: str = ""
    text: str = ""
    values: list[str] = msgspec.field(default_factory=list)
    key: str = ""
    submit: bool = False
    text_gone: str = ""
    expression: str = ""
    tab_action: str = ""  # tabs: list | new | select | close
    tab: int = -1
    full_page: bool = False
    timeout_s: float = 30.0
    allow: list[str] = msgspec.field(default_factory=list)
    evaluate: bool = False
    executable: str = ""
    max_sessions: int = 16


JobParams = OcrParams | SttParams | TtsParams | UpscaleParams | EmbedParams | BrowserParams
