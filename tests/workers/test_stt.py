"""The stt backend in-process: speech made by Piper and by espeak-ng is transcribed
back within a bounded word error rate; bad and over-long audio are refused."""

from __future__ import annotations

import itertools
import shutil

import pytest

from tests.media_inputs import SPOKEN, espeak_speech, piper_speech, run_job, silence_wav, spec, wer
from turnout.protocol import messages as m
from turnout.workers.base import BackendError, ModelLoadError
from turnout.workers.stt import SttBackend, create

# Measured with tiny.en int8, greedy decoding (deterministic on a given input):
# Piper (noise-free voice) 0.00; espeak-ng 0.29 ("quick round-fark stump over the lazy nog": its
# robotic voice is far from Whisper's training data). The bounds leave some room.
MAX_WER_PIPER = 0.10
MAX_WER_ESPEAK = 0.40


@pytest.fixture(scope="module")
def stt() -> SttBackend:
    b = create(spec("stt"))  # type: ignore[arg-type]
    b.load()
    return b


def transcript(outs: list[object]) -> str:
    return "".join(s.text for o in outs if isinstance(o, m.JobOutput) for s in o.segments).strip()


def test_piper_speech_is_transcribed(stt: SttBackend) -> None:
    outs = run_job(stt, m.SttParams(), piper_speech())
    text = transcript(outs)
    w = wer(SPOKEN, text)
    print(f"\nWER piper -> tiny.en: {w:.3f}  ({text!r})")
    assert w <= MAX_WER_PIPER, text
    first = outs[0]
    assert isinstance(first, m.JobOutput) and first.language == "en" and 4 < first.duration_s < 15
    assert isinstance(outs[-1], m.Done)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_speech_is_transcribed(stt: SttBackend) -> None:
    text = transcript(run_job(stt, m.SttParams(), espeak_speech()))
    w = wer(SPOKEN, text)
    print(f"\nWER espeak-ng -> tiny.en: {w:.3f}  ({text!r})")
    assert w <= MAX_WER_ESPEAK, text


def test_word_timestamps_are_ordered(stt: SttBackend) -> None:
    outs = run_job(stt, m.SttParams(word_timestamps=True), piper_speech("Hello there, general Kenobi."))
    ws = [w for o in outs if isinstance(o, m.JobOutput) for s in o.segments for w in s.words]
    assert len(ws) >= 3
    assert all(a.start <= a.end <= b.start + 0.01 for a, b in itertools.pairwise(ws))


def test_silence_gives_no_segments_but_a_duration(stt: SttBackend) -> None:
    outs = run_job(stt, m.SttParams(), silence_wav(2.0))
    assert transcript(outs) == ""
    assert isinstance(outs[0], m.JobOutput) and abs(outs[0].duration_s - 2.0) < 0.05


def test_too_long_is_too_large(stt: SttBackend) -> None:
    with pytest.raises(BackendError) as e:
        run_job(stt, m.SttParams(max_seconds=5), silence_wav(6.0))
    assert e.value.kind == "too_large" and "6.0 s" in e.value.message


@pytest.mark.parametrize("data", [b"RIFF\x00\x00\x00\x00WAVEjunk", b"\x00" * 1000, b"ID3" + b"\xff" * 100])
def test_not_audio_is_invalid_request(stt: SttBackend, data: bytes) -> None:
    with pytest.raises(BackendError) as e:
        run_job(stt, m.SttParams(), data)
    assert e.value.kind == "invalid_request" and e.value.message.startswith("file:")


def test_english_only_model_refuses_other_languages(stt: SttBackend) -> None:
    with pytest.raises(BackendError, match="English-only"):
        run_job(stt, m.SttParams(language="fr"), silence_wav(1.0))


def test_a_path_that_is_not_a_model_is_a_load_error(tmp_path: object) -> None:
    b = create(spec("stt", path=str(tmp_path)))  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=r"no model\.bin"):
        b.load()
