"""Speech encoders stream: each sentence's bytes come out as it is fed, before the
end, and the whole decodes to the audio that went in."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from turnout.workers.audio_encode import FORMATS, StreamEncoder

RATE = 22050


def _tone(seconds: float) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_sentence_streams_and_the_whole_decodes(fmt: str) -> None:
    enc = StreamEncoder(fmt, RATE)
    first = enc.feed(_tone(1.0))
    second = enc.feed(_tone(1.0))
    tail = enc.close()
    assert len(first) > 1000 and len(second) > 1000  # not held until the end
    with av.open(io.BytesIO(first + second + tail)) as f:
        s = f.streams.audio[0]
        seconds = sum(fr.samples for fr in f.decode(audio=0)) / s.rate
    assert abs(seconds - 2.0) < 0.1, seconds
