"""gateway/media.py without processes: transcript formats, WAV headers, model
choice, and the MCP tool functions over a stand-in bus."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path
from typing import Any

import pytest

from turnout.gateway import media
from turnout.gateway.errors import ApiError
from turnout.protocol import messages as m
from turnout.protocol.config import Config, ModelConfig

SEGS = [m.Segment(id=0, start=0.0, end=1.5, text=" Hello there."),
        m.Segment(id=1, start=1.5, end=3661.25, text=" General Kenobi.",
                  words=[m.Word(" General", 1.5, 2.0, 0.9), m.Word(" Kenobi.", 2.0, 2.6, 0.8)])]


def test_srt_and_vtt() -> None:
    assert media.to_srt(SEGS) == ("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
                                  "2\n00:00:01,500 --> 01:01:01,250\nGeneral Kenobi.\n\n")
    assert media.to_vtt(SEGS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
                                  "00:00:01.500 --> 01:01:01.250\nGeneral Kenobi.\n\n")


def test_verbose_json_granularities() -> None:
    t = media.Transcript("Hello there. General Kenobi.", "en", 3661.25, SEGS)
    body = media.verbose_json(t, words=True, segments=False)
    assert body["language"] == "english" and body["duration"] == 3661.25 and "segments" not in body
    assert body["words"] == [{"word": "General", "start": 1.5, "end": 2.0}, {"word": "Kenobi.", "start": 2.0, "end": 2.6}]
    assert body["usage"] == {"type": "duration", "seconds": 3662}
    assert [s["text"] for s in media.verbose_json(t, words=False, segments=True)["segments"]] == [s.text for s in SEGS]


def test_wav_header_reads_back() -> None:
    pcm = b"\x01\x00" * 500
    with wave.open(io.BytesIO(media.wav_header(16000, len(pcm)) + pcm)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 1, 2, 500)
    assert media.wav_header(24000)[40:44] == b"\xdb\xff\xff\xff"  # streaming: "to the end"


def test_worker_errors_name_their_field() -> None:
    e = media.media_error("too_large", "file: the audio is 40.0 s long")
    assert (e.status, e.param, e.code) == (413, "file", "request_too_large")
    e = media.media_error("invalid_request", "language: English-only")
    assert (e.status, e.param) == (400, "language")
    assert media.media_error("overloaded", "busy").status == 529


class FakeStream:
    """Stands in for a JobStream: canned outputs (with frames) then Done."""

    def __init__(self, outputs: list[tuple[m.JobOutput, list[bytes]]]) -> None:
        self.batches: list[m.StreamMsg] = [o for o, _ in outputs] + [m.Done("r", len(outputs), "end_turn")]
        self._frames = {i: [Frame(f) for f in fs] for i, (_, fs) in enumerate(outputs)}
        for i, (o, _) in enumerate(outputs):
            o.seq = i
        self.done = False
        self.cancelled = False

    async def next_batch(self) -> list[m.StreamMsg]:
        out, self.batches = self.batches, []
        self.done = True
        return out

    def frames(self, msg: m.JobOutput) -> list[Frame]:
        return self._frames.pop(msg.seq, [])

    def cancel(self) -> None:
        self.cancelled = True


class Frame:
    def __init__(self, b: bytes) -> None:
        self.bytes = b


class FakeBus:
    def __init__(self, outputs: list[tuple[m.JobOutput, list[bytes]]]) -> None:
        self.config = Config(models=[ModelConfig(name="chat", backend="fake"), ModelConfig(name="o", backend="ocr"),
                                     ModelConfig(name="s", backend="stt"), ModelConfig(name="t", backend="tts"),
                                     ModelConfig(name="u", backend="upscale"), ModelConfig(name="t2", backend="tts")])
        self.outputs = outputs
        self.jobs: list[tuple[str, m.JobParams, list[bytes]]] = []

    def model_config(self, name: str) -> ModelConfig | None:
        return self.config.resolve_model(name)

    async def open_job(self, mc: ModelConfig, params: m.JobParams, data: list[bytes]) -> FakeStream:
        self.jobs.append((mc.name, params, data))
        return FakeStream(self.outputs)


def test_pick_model() -> None:
    bus: Any = FakeBus([])
    assert media.pick_model(bus, "stt", "whisper-1").name == "s"  # OpenAI's name: the first stt
    assert media.pick_model(bus, "tts", "t2").name == "t2"
    with pytest.raises(ApiError) as e:
        media.pick_model(bus, "ocr", "chat")
    assert e.value.status == 400 and "fake model" in e.value.message
    with pytest.raises(ApiError) as e:
        media.pick_model(_bus_without_ocr(), "ocr")
    assert e.value.status == 404 and 'backend = "ocr"' in e.value.message


def _bus_without_ocr() -> Any:
    b = FakeBus([])
    b.config.models = [mc for mc in b.config.models if mc.backend != "ocr"]
    return b


async def test_mcp_ocr_image_from_path_and_base64(tmp_path: Path) -> None:
    out = m.JobOutput("r", 0, lines=[m.OcrLine("Hello", 0.99), m.OcrLine("world", 0.98)], pages=1)
    bus: Any = FakeBus([(out, [])])
    f = tmp_path / "img.png"
    f.write_bytes(b"PNGDATA")
    assert await media.ocr_image(bus, str(f)) == "Hello\nworld"
    assert await media.ocr_image(bus, "data:image/png;base64," + base64.b64encode(b"XYZ").decode()) == "Hello\nworld"
    assert [j[2] for j in bus.jobs] == [[b"PNGDATA"], [b"XYZ"]]
    assert bus.jobs[0][1].max_pixels == bus.config.media.max_image_pixels
    with pytest.raises(ApiError, match="not a readable file"):
        await media.ocr_image(bus, str(tmp_path / "missing.png"))


async def test_mcp_transcribe_audio() -> None:
    out = m.JobOutput("r", 0, segments=SEGS, language="en", duration_s=3.0)
    bus: Any = FakeBus([(out, [])])
    assert await media.transcribe_audio(bus, base64.b64encode(b"RIFF").decode(), language="en") == \
        "Hello there. General Kenobi."
    params = bus.jobs[0][1]
    assert isinstance(params, m.SttParams) and params.language == "en" and params.max_seconds == 3600.0


async def test_mcp_speak_text_writes_a_wav(tmp_path: Path) -> None:
    chunks = [(m.JobOutput("r", 0, media_type="audio/pcm;rate=22050"), [b"\x01\x00" * 100]),
              (m.JobOutput("r", 0, media_type="audio/pcm;rate=22050"), [b"\x02\x00" * 50])]
    bus: Any = FakeBus(chunks)
    path = await media.speak_text(bus, "Hi. There.", output_path=str(tmp_path / "o.wav"), voice="t2")
    assert bus.jobs[0][0] == "t2"  # the voice named a tts model
    with wave.open(path) as w:
        assert w.getframerate() == 22050 and w.getnframes() == 150


async def test_mcp_upscale_image_writes_the_file(tmp_path: Path) -> None:
    bus: Any = FakeBus([(m.JobOutput("r", 0, media_type="image/png", width=4, height=4), [b"\x89PNG..."])])
    path = await media.upscale_image(bus, base64.b64encode(b"img").decode(), scale=4)
    try:
        assert Path(path).read_bytes() == b"\x89PNG..." and bus.jobs[0][1].scale == 4
    finally:
        Path(path).unlink()


async def test_mcp_media_tools_are_confined_to_media_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: the tools read any path and wrote any output_path they were given.
    Now only inside [mcp] media_dirs (default: home and the temp dir), nothing
    hidden, no escape by symlink or '..', outputs with the tool's extension."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_bytes(b"KEY")
    (home / "pics").mkdir()
    (home / "pics" / "ok.png").write_bytes(b"PNG")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"SECRET")
    (home / "pics" / "link.png").symlink_to(outside / "secret.png")
    (home / "pics" / "dirlink").symlink_to(outside)
    out = m.JobOutput("r", 0, lines=[m.OcrLine("ok", 0.99)], pages=1)
    bus: Any = FakeBus([(out, [])])
    bus.config.mcp.media_dirs = [str(home)]
    assert await media.ocr_image(bus, str(home / "pics" / "ok.png")) == "ok"
    refused = ["/etc/passwd", str(home / ".ssh" / "id_ed25519"), str(home / "pics" / "link.png"),
               str(home / "pics" / "dirlink" / "secret.png"), str(home / "pics" / ".." / ".." / "outside" / "secret.png")]
    for path in refused:
        with pytest.raises(ApiError) as ei:
            await media.ocr_image(bus, path)
        assert ei.value.status == 403 and ei.value.param == "image", path
    assert [j[2] for j in bus.jobs] == [[b"PNG"]]  # nothing refused reached a worker
    tts: Any = FakeBus([(m.JobOutput("r", 0, media_type="audio/pcm;rate=22050"), [b"\x01\x00"])])
    tts.config.mcp.media_dirs = [str(home)]
    for target in (str(outside / "x.wav"), str(home / ".bashrc.wav"), str(home / "pics" / "dirlink" / "x.wav"),
                   str(home / "notes.txt")):
        with pytest.raises(ApiError) as ei:
            await media.speak_text(tts, "Hi.", output_path=target, voice="t2")
        assert ei.value.param == "output_path", target
    assert tts.jobs == [] and sorted(p.name for p in outside.iterdir()) == ["secret.png"]
    (home / "pics" / "trap.wav").symlink_to(outside / "trap.wav")  # the final component a symlink
    with pytest.raises(ApiError, match="cannot write"):
        await media.speak_text(tts, "Hi.", output_path=str(home / "pics" / "trap.wav"), voice="t2")
    assert not (outside / "trap.wav").exists()
    monkeypatch.setenv("HOME", str(home))
    bus.config.mcp.media_dirs = []  # the default: home and the temp dir
    with pytest.raises(ApiError, match="hidden"):
        await media.ocr_image(bus, str(home / ".ssh" / "id_ed25519"))


async def test_chat_images_become_their_ocr_text() -> None:
    from turnout.protocol.chat import ChatRequest, ImagePart, Message, TextPart

    bus: Any = FakeBus([(m.JobOutput("r", 0, lines=[m.OcrLine("INVOICE 42", 0.99)], pages=1), [])])
    req = ChatRequest(model="chat", max_tokens=10, messages=[Message("user", [
        TextPart("what does it say?"), ImagePart(media_type="image/png", data=base64.b64encode(b"png").decode()),
        ImagePart(url="https://example.invalid/x.png")])])
    out = await media.ocr_chat_images(bus, req)
    parts = out.messages[0].content
    assert all(isinstance(p, TextPart) for p in parts)
    assert "INVOICE 42" in parts[1].text and "not inline" in parts[2].text  # type: ignore[union-attr]
