"""The media routes with nothing configured: a real turnout started with no config
file (as a new user runs it, with the media extra installed) answers OCR, speech to
text, text to speech, upscale and embeddings with the bundled models, each worker
loaded on the route's first request and not before."""

from __future__ import annotations

import io
from collections.abc import Iterator

import openai
import pytest
import requests
from PIL import Image

from tests.media_inputs import png, text_image, wer
from turnout.bench.plain_path import assembled_cache
from turnout.protocol.config import DEFAULT_MEDIA_MODELS
from turnout.supervisor.launch import TurnoutProcess

pytestmark = pytest.mark.slow  # the bundled default LLM starts with it


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    cache = assembled_cache(tmp_path_factory.mktemp("turnout-cache"))
    t = TurnoutProcess(None, workdir=str(tmp_path_factory.mktemp("plain-media")),
                       env={"TURNOUT_CACHE_DIR": str(cache)})
    t.start(timeout=180)
    yield t
    t.stop()
    assert not t.leftovers(), t.leftovers()


def running(t: TurnoutProcess) -> set[str]:
    return {str(w["model"]) for w in t.admin_workers() if w["state"] not in ("exited", "failed")}


def post(t: TurnoutProcess, path: str, **kw: object) -> requests.Response:
    return requests.post(t.base_url + path, headers={"Authorization": f"Bearer {t.token}"},
                         timeout=180, **kw)  # type: ignore[arg-type]


def test_every_media_route_answers_with_no_config(plain: TurnoutProcess) -> None:
    names = {b: name for b, (name, _) in DEFAULT_MEDIA_MODELS.items()}
    # Listed, and none loaded before its first request.
    listed = {m["id"] for m in requests.get(plain.base_url + "/v1/models", timeout=10,
                                            headers={"Authorization": f"Bearer {plain.token}"}).json()["data"]}
    assert set(names.values()) <= listed, listed
    assert not running(plain) & set(names.values()), plain.admin_workers()

    c = openai.OpenAI(base_url=plain.base_url + "/v1", api_key=plain.token, max_retries=0, timeout=180)
    said = "Local speech synthesis is streamed sentence by sentence. It is then transcribed again."
    audio = c.audio.speech.create(model="tts-1", voice="alloy", input=said, response_format="wav").content
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE" and len(audio) > 20_000
    assert names["tts"] in running(plain) and names["stt"] not in running(plain)

    back = c.audio.transcriptions.create(model="whisper-1", file=("speech.wav", audio)).text
    # the voice's default noise makes each synthesis differ (tests/e2e/test_media.py
    # turns it off for its tighter bound)
    assert wer(said, back) <= 0.3, back

    lines = ["Nothing configured", "OCR reads 4711"]
    r = post(plain, "/v1/ocr", files={"file": ("t.png", png(text_image(lines)), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "\n".join(lines)

    small = text_image(["up"], size=20, width=64)
    r = post(plain, "/v1/images/upscale", data={"scale": "2"}, files={"image": ("s.png", png(small), "image/png")})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (small.width * 2, small.height * 2)

    e = c.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 384

    assert set(names.values()) <= running(plain), plain.admin_workers()

