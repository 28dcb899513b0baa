"""The tts backend in-process: audio streamed sentence by sentence, speed, pcm
resampling, the espeak-ng fallback, and a text -> speech -> text round trip."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.media_inputs import run_job, spec, wav_bytes, wer
from turnout.protocol import messages as m
from turnout.workers.base import BackendError, ModelLoadError, WithFrames
from turnout.workers.tts import TtsBackend, _read_wav, create, resample

THREE = "This is the first sentence. Here is a second one! And is this the third?"


@pytest.fixture(scope="module")
def piper() -> TtsBackend:
    # Piper draws random noise for phoneme durations; without it, the same text has
    # the same length every time, so lengths can be compared exactly.
    b = create(spec("tts", noise_scale=0.0, noise_w_scale=0.0))  # type: ignore[arg-type]
    b.load()
    return b


def audio(outs: list[object]) -> tuple[bytes, int]:
    chunks = [o for o in outs if isinstance(o, WithFrames)]
    rate = int(chunks[0].msg.media_type.split("rate=")[1])
    return b"".join(bytes(f) for c in chunks for f in c.frames), rate


def test_one_chunk_per_sentence_as_it_is_made(piper: TtsBackend) -> None:
    outs = run_job(piper, m.TtsParams(text=THREE), None)
    chunks = [o for o in outs if isinstance(o, WithFrames)]
    assert len(chunks) == 3
    for c in chunks:
        assert c.msg.media_type == "audio/pcm;rate=22050"
        assert abs(len(c.frames[0]) / 2 / 22050 - c.msg.duration_s) < 0.001
    assert isinstance(outs[-1], m.Done)
    # A cancel after the first sentence stops the synthesis there.
    assert len(run_job(piper, m.TtsParams(text=THREE), None, stop_after=2)) == 1


def test_speed_changes_duration(piper: TtsBackend) -> None:
    normal, _ = audio(run_job(piper, m.TtsParams(text="Speed matters here."), None))
    fast, _ = audio(run_job(piper, m.TtsParams(text="Speed matters here.", speed=2.0), None))
    assert 0.35 < len(fast) / len(normal) < 0.65


def test_pcm_rate_is_resampled(piper: TtsBackend) -> None:
    a22, _ = audio(run_job(piper, m.TtsParams(text="Resample me."), None))
    a24, rate = audio(run_job(piper, m.TtsParams(text="Resample me.", sample_rate=24000), None))
    assert rate == 24000
    assert abs(len(a24) / len(a22) - 24000 / 22050) < 0.01


def test_resample_keeps_a_tone() -> None:
    t = np.arange(22050) / 22050
    y = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), 22050, 24000)
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 24000 / len(y) - 440) < 2


@pytest.mark.parametrize("params, message", [
    (m.TtsParams(text="   "), "empty"),
    (m.TtsParams(text="hello", speed=5.0), "speed"),
])
def test_bad_requests(piper: TtsBackend, params: m.TtsParams, message: str) -> None:
    with pytest.raises(BackendError) as e:
        run_job(piper, params, None)
    assert e.value.kind == "invalid_request" and message in e.value.message


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_fallback_needs_no_model() -> None:
    b = create(spec("tts", engine="espeak"))  # type: ignore[arg-type]
    b.load()
    outs = run_job(b, m.TtsParams(text=THREE), None)
    pcm, rate = audio(outs)
    assert len([o for o in outs if isinstance(o, WithFrames)]) == 3
    assert rate == 22050 and len(pcm) / 2 / rate > 2.0
    assert np.abs(np.frombuffer(pcm, "<i2")).max() > 3000  # not silence


def test_read_wav_with_unset_sizes() -> None:
    pcm = (np.arange(100, dtype="<i2") * 100).tobytes()
    wav = bytearray(wav_bytes(pcm, 16000))
    wav[40:44] = b"\xff\xff\xff\xff"  # a streamed WAV's data size
    x, rate = _read_wav(bytes(wav))
    assert rate == 16000 and len(x) == 100 and abs(x[1] * 32768 - 100) < 1e-3


def test_missing_voice_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        create(spec("tts", path="/nonexistent/voice.onnx")).load()  # type: ignore[arg-type]


def test_round_trip_text_speech_text(piper: TtsBackend) -> None:
    from turnout.workers.stt import create as create_stt

    stt = create_stt(spec("stt"))  # type: ignore[arg-type]
    stt.load()
    text = "The worker turns text into speech, and the other one turns it back into text."
    pcm, rate = audio(run_job(piper, m.TtsParams(text=text), None))
    outs = run_job(stt, m.SttParams(), wav_bytes(pcm, rate))
    back = "".join(s.text for o in outs if isinstance(o, m.JobOutput) for s in o.segments)
    w = wer(text, back)
    print(f"\nround trip WER: {w:.3f} ({back!r})")
    assert w <= 0.15, back
