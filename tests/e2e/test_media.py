"""The media endpoints end to end: a real turnout with ocr, stt, tts and upscale
workers, driven over HTTP (the official ``openai`` SDK for the audio endpoints)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from tests.helpers import poll_until
from tests.media_inputs import (
    SPOKEN,
    piper_speech,
    png,
    psnr,
    realish_image,
    silence_wav,
    text_image,
    wer,
)
from turnout.supervisor.launch import TurnoutProcess

MEDIA_CONFIG = """
[server]
worker_wait_s = 20.0

[media]
max_upload_mb = 1.0
max_audio_seconds = 30.0
max_image_pixels = 1000000
max_upscale_pixels = 250000
max_speech_chars = 600

[[models]]
name = "fake"
backend = "fake"

[[models]]
name = "ocr"
backend = "ocr"

[[models]]
name = "whisper-tiny"
backend = "stt"
aliases = ["whisper-1"]

[[models]]
name = "joe"
backend = "tts"
[models.options]
noise_w_scale = 0.0

[[models]]
name = "esrgan"
backend = "upscale"
[models.options]
tile = 64
"""


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    t = TurnoutProcess(MEDIA_CONFIG, workdir=str(tmp_path_factory.mktemp("media")))
    t.start(timeout=120)
    yield t
    t.stop()
    assert not t.leftovers(), t.leftovers()


def oai(t: TurnoutProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=t.base_url + "/v1", api_key=t.token, max_retries=0)


class Http(requests.Session):
    """requests with turnout's base URL, token and a default timeout."""

    def __init__(self, t: TurnoutProcess, timeout: float) -> None:
        super().__init__()
        self.base_url = t.base_url
        self.timeout = timeout
        self.headers["Authorization"] = f"Bearer {t.token}"

    def request(self, method: str, url: str, *args: object, **kw: object) -> requests.Response:  # type: ignore[override]
        kw.setdefault("timeout", self.timeout)
        return super().request(method, self.base_url + url, *args, **kw)  # type: ignore[arg-type]


def http(t: TurnoutProcess, timeout: float = 60) -> Http:
    return Http(t, timeout)


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    return piper_speech()


def assert_openai_error(r: requests.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err


# ------------------------------------------------------------------ transcription


def test_transcription_formats(media: TurnoutProcess, speech_wav: bytes) -> None:
    c = oai(media)
    tr = c.audio.transcriptions.create(model="whisper-1", file=("speech.wav", speech_wav))
    w = wer(SPOKEN, tr.text)
    print(f"\nWER over HTTP (piper -> tiny.en): {w:.3f}")
    assert w <= 0.10, tr.text
    text = c.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav), response_format="text")
    assert isinstance(text, str) and wer(SPOKEN, text) <= 0.10
    srt = c.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and "-->" in srt
    vtt = c.audio.transcriptions.create(model="whisper-1", file=("s.wav", speech_wav), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    v = c.audio.transcriptions.create(model="whisper-tiny", file=("s.wav", speech_wav), response_format="verbose_json",
                                      timestamp_granularities=["word", "segment"])
    assert v.language == "english" and 4 < v.duration < 15
    assert v.segments and v.segments[0].start == 0.0 and v.segments[-1].end <= v.duration + 0.1
    assert v.words and [x.word.lower().strip(",.") for x in v.words[:3]] == ["the", "quick", "brown"]


def test_transcription_stream(media: TurnoutProcess, speech_wav: bytes) -> None:
    with http(media) as h:
        r = h.post("/v1/audio/transcriptions", data={"model": "whisper-1", "stream": "true"},
                   files={"file": ("s.wav", speech_wav, "audio/wav")})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    import json

    parsed = [json.loads(e) for e in events]
    assert [e["type"] for e in parsed][-1] == "transcript.text.done"
    deltas = "".join(e["delta"] for e in parsed if e["type"] == "transcript.text.delta")
    assert deltas == parsed[-1]["text"] and wer(SPOKEN, deltas) <= 0.10


# ------------------------------------------------------------------------- speech


def test_round_trip_text_speech_text(media: TurnoutProcess) -> None:
    c = oai(media)
    said = "Local speech synthesis is streamed sentence by sentence. It is then transcribed again."
    audio = c.audio.speech.create(model="tts-1", voice="alloy", input=said, response_format="wav").content
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    back = c.audio.transcriptions.create(model="whisper-1", file=("speech.wav", audio)).text
    w = wer(said, back)
    print(f"\nround trip WER over HTTP: {w:.3f} ({back!r})")
    assert w <= 0.15, back


def test_speech_in_every_openai_format(media: TurnoutProcess) -> None:
    """mp3 (the default, as OpenAI's), opus, aac and flac decode to the same length
    of speech as wav; mp3 transcribes back as well as the wav does."""
    import av

    c = oai(media)
    said = "Local speech synthesis is streamed sentence by sentence. It is then transcribed again."
    wav = c.audio.speech.create(model="tts-1", voice="alloy", input=said, response_format="wav").content
    seconds = (len(wav) - 44) / 2 / 22050
    with http(media) as h:
        default = h.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": said})
    assert default.status_code == 200 and default.headers["content-type"] == "audio/mpeg"
    for fmt, ctype, codec in (("mp3", "audio/mpeg", "mp3"), ("opus", "audio/ogg", "opus"),
                              ("aac", "audio/aac", "aac"), ("flac", "audio/flac", "flac")):
        r = c.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=said, response_format=fmt)  # type: ignore[arg-type]
        data = r.content
        assert r.headers["content-type"] == ctype
        with av.open(io.BytesIO(data)) as f:
            stream = f.streams.audio[0]
            assert stream.codec_context.name.startswith(codec), (fmt, stream.codec_context.name)
            got = sum(fr.samples for fr in f.decode(audio=0)) / stream.rate
        print(f"\n{fmt}: {len(data)} bytes, {got:.2f} s (wav {seconds:.2f} s, {len(wav)} bytes)")
        assert abs(got - seconds) < 0.15, (fmt, got, seconds)
        if fmt == "mp3":
            assert data[:3] == b"ID3" or data[0] == 0xFF
            # As intelligible as the wav: whisper hears the same words in both.
            back = c.audio.transcriptions.create(model="whisper-1", file=("speech.mp3", data)).text
            ref = c.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav)).text
            print(f"WER mp3 {wer(said, back):.3f} ({back!r}), wav {wer(said, ref):.3f} ({ref!r})")
            assert wer(said, back) <= max(0.15, wer(said, ref) + 0.1), (back, ref)


def test_speech_pcm_is_24khz_and_sse_streams_sentences(media: TurnoutProcess) -> None:
    c = oai(media)
    text = "One sentence here. Another sentence there. And a third."
    pcm = c.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="pcm").content
    seconds = len(pcm) / 2 / 24000
    assert 2.0 < seconds < 8.0
    with http(media) as h:
        r = h.post("/v1/audio/speech", json={"model": "tts-1", "voice": "joe", "input": text,
                                             "response_format": "pcm", "stream_format": "sse"})
    import json

    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) == 3 and events[-1]["type"] == "speech.audio.done"
    streamed = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert abs(len(streamed) / 2 / 24000 - seconds) < 0.05  # same text, same length (noise_w = 0)


# --------------------------------------------------------------------- ocr, upscale


def test_ocr_exact_text_multipart_and_base64(media: TurnoutProcess) -> None:
    lines = ["Hello from turnout", "OCR reads 1234 exactly"]
    image = png(text_image(lines))
    with http(media) as h:
        r = h.post("/v1/ocr", files={"file": ("t.png", image, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["text"] == "\n".join(lines) and body["pages"][0]["width"] == 820
        assert [ln["text"] for ln in body["pages"][0]["lines"]] == lines
        r = h.post("/v1/ocr", json={"image": "data:image/png;base64," + base64.b64encode(image).decode(),
                                    "response_format": "text"})
        assert r.status_code == 200 and r.text == "\n".join(lines) + "\n"


def test_upscale_beats_lanczos(media: TurnoutProcess) -> None:
    original = realish_image(256)
    small = original.resize((128, 128), Image.Resampling.LANCZOS)
    with http(media) as h:
        r = h.post("/v1/images/upscale", data={"scale": "2"}, files={"image": ("s.png", png(small), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    sr = Image.open(io.BytesIO(r.content))
    p_sr, p_lz = psnr(sr, original), psnr(small.resize((256, 256), Image.Resampling.LANCZOS), original)
    print(f"\nupscale 2x over HTTP: PSNR {p_sr:.2f} dB vs Lanczos {p_lz:.2f} dB")
    assert sr.size == (256, 256) and p_sr > p_lz + 1.5
    with http(media) as h:
        r = h.post("/v1/images/upscale", json={"image": base64.b64encode(png(small)).decode(), "scale": 4,
                                                "response_format": "b64_json", "output_format": "jpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "512x512"
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))).format == "JPEG"


# ---------------------------------------------------------------------- bad input


def test_bad_input_is_4xx_and_the_workers_keep_serving(media: TurnoutProcess, speech_wav: bytes) -> None:
    pids = media.worker_pids()
    good_png = png(text_image(["still serving"], width=400))
    with http(media) as h:
        def post(path: str, field: str, data: bytes, **form: str) -> requests.Response:
            return h.post(path, data=form, files={field: ("f.bin", data, "application/octet-stream")})

        # corrupt / empty / wrong format
        assert_openai_error(post("/v1/ocr", "file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), 400, "image")
        assert_openai_error(post("/v1/ocr", "file", b""), 400, "empty")
        assert_openai_error(post("/v1/audio/transcriptions", "file", b"RIFF....WAVEnope", model="whisper-1"), 400, "audio")
        assert_openai_error(post("/v1/audio/transcriptions", "file", speech_wav, model="whisper-1",
                                 response_format="mp3"), 400, "response_format")
        assert_openai_error(post("/v1/images/upscale", "image", good_png, scale="3"), 400, "scale")
        assert_openai_error(h.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy",
                                                             "response_format": "ogg"}), 400, "mp3, opus, aac, flac, wav, pcm")
        assert_openai_error(post("/v1/ocr", "file", good_png, model="fake"), 400, "fake model")
        # over the configured limits
        assert_openai_error(post("/v1/ocr", "file", png(Image.new("RGB", (1200, 1000), "white"))), 413,
                            "1200x1000", "media.max_image_pixels")
        assert_openai_error(post("/v1/images/upscale", "image", png(Image.new("RGB", (600, 500)))), 413,
                            "media.max_upscale_pixels")
        assert_openai_error(post("/v1/audio/transcriptions", "file", silence_wav(31), model="whisper-1"), 413,
                            "31.0 s", "media.max_audio_seconds")
        assert_openai_error(post("/v1/ocr", "file", np.random.default_rng(1).bytes(1_100_000)), 413,
                            "media.max_upload_mb")
        assert_openai_error(h.post("/v1/audio/speech", json={"model": "tts-1", "input": "word " * 200, "voice": "a"}),
                            413, "media.max_speech_chars")
        # ...and every worker goes on serving, in the same process.
        r = post("/v1/ocr", "file", good_png)
        assert r.status_code == 200 and r.json()["text"] == "still serving"
        r = post("/v1/audio/transcriptions", "file", speech_wav, model="whisper-1", response_format="text")
        assert r.status_code == 200 and wer(SPOKEN, r.text) <= 0.10
        r = post("/v1/images/upscale", "image", good_png)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (800, 2 * 128)
    assert media.worker_pids() == pids


def test_cancel_stops_an_upscale_between_tiles(media: TurnoutProcess) -> None:
    big = png(realish_image(480))  # 64 tiles of 64 px: several seconds of work
    before = len([e for e in media.log_events() if e.get("event") == "request_cancelled"])
    t0 = time.monotonic()
    with http(media, timeout=0.8) as h, pytest.raises(requests.exceptions.ReadTimeout):
        h.post("/v1/images/upscale", data={"scale": "2"}, files={"image": ("b.png", big, "image/png")})
    events = poll_until(lambda: [e for e in media.log_events() if e.get("event") == "request_cancelled"][before:],
                        timeout=10)
    print(f"\nupscale cancelled {events[0]['cancel_ms']} ms after the gateway saw the disconnect")
    assert float(events[0]["cancel_ms"]) < 1000  # at most one 64-px tile
    assert time.monotonic() - t0 < 5
    with http(media) as h:  # and the worker serves the next job at once
        r = h.post("/v1/images/upscale", files={"image": ("s.png", png(Image.new("RGB", (32, 32))), "image/png")})
    assert r.status_code == 200


def test_media_workers_report_memory(media: TurnoutProcess) -> None:
    rows = {w["model"]: w for w in media.admin_workers()}
    for name in ("ocr", "whisper-tiny", "joe", "esrgan"):
        assert rows[name]["state"] == "ready" and int(rows[name]["rss_bytes"]) > 50 * 2**20, rows[name]


def test_a_killed_media_worker_is_restarted_and_serves_again(media: TurnoutProcess) -> None:
    import os
    import signal

    old = media.worker_pids()["esrgan-0"]
    os.kill(old, signal.SIGKILL)  # a crash in the native upscaler, say
    tiny = png(Image.new("RGB", (16, 16)))
    with http(media) as h:
        # A request racing the crash may reach the dying worker: 503 with Retry-After,
        # in OpenAI's shape, never a hang or a gateway error.
        r = h.post("/v1/images/upscale", files={"image": ("s.png", tiny, "image/png")})
        assert r.status_code == 200 or (r.status_code == 503 and r.headers.get("Retry-After")), r.text
        new = poll_until(lambda: (p := media.worker_pids().get("esrgan-0")) not in (None, old) and p, timeout=15)
        # The restarted worker serves; the gateway waits for it to be ready if need be.
        r = h.post("/v1/images/upscale", files={"image": ("s.png", tiny, "image/png")})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (32, 32)
        # ...and the other workers were not touched.
        r = h.post("/v1/ocr", files={"file": ("t.png", png(text_image(["fine"], width=300)), "image/png")})
        assert r.json()["text"] == "fine"
    assert new != old
