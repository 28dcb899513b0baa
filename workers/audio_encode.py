"""Streaming audio encoders for synthesised speech: mp3, opus (in Ogg), aac (ADTS)
and flac, as OpenAI's ``/v1/audio/speech`` offers them.

PyAV (FFmpeg's libmp3lame, libopus, aac and flac encoders) is already installed:
faster-whisper decodes audio with it. Each sentence's PCM is encoded as it
arrives and the bytes the muxer has written so far are handed back, so compressed
speech streams sentence by sentence like wav does. The output is written to a sink
without ``seek``: FFmpeg then writes no trailer it would have to go back for
(mp3's Xing header, flac's final STREAMINFO), so what was sent stays valid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# response_format -> (container, encoder, its rate or 0 for the voice's own, media type)
FORMATS: dict[str, tuple[str, str, int, str]] = {
    "mp3": ("mp3", "libmp3lame", 0, "audio/mpeg"),
    "opus": ("ogg", "libopus", 48000, "audio/ogg"),  # Opus takes 8/12/16/24/48 kHz only
    "aac": ("adts", "aac", 0, "audio/aac"),
    "flac": ("flac", "flac", 0, "audio/flac"),
}


class _Sink:
    """A write-only file for FFmpeg (no seek: a stream)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, b: Any) -> int:
        self.buf += b
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


class StreamEncoder:
    """Options: fmt: a key of :data:`FORMATS`; rate: the PCM's sample rate."""

    def __init__(self, fmt: str, rate: int) -> None:
        import av  # late: only speech in a compressed format needs it

        container, codec, enc_rate, self.media_type = FORMATS[fmt]
        self.rate = rate
        self.sink = _Sink()
        # Ogg holds packets until a page spans page_duration (1 s by default): 100 ms
        # pages let each sentence out as soon as it is encoded.
        opts = {"page_duration": "100000"} if container == "ogg" else {}
        self.out = av.open(self.sink, mode="w", format=container, options=opts)
        stream: Any = self.out.add_stream(codec, rate=enc_rate or rate, layout="mono")
        if codec != "flac":
            stream.bit_rate = 64000
        self.stream = stream
        self._frame = av.AudioFrame

    def _encode(self, frame: Any) -> bytes:
        for pkt in self.stream.encode(frame):
            self.out.mux(pkt)
        return self.sink.take()

    def feed(self, pcm16: bytes) -> bytes:
        """Encode 16-bit mono PCM; returns the bytes ready so far (maybe none)."""
        if not pcm16:
            return b""
        frame = self._frame.from_ndarray(np.frombuffer(pcm16, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        return self._encode(frame)

    def close(self) -> bytes:
        """Flush the encoder and the container; returns the last bytes."""
        tail = self._encode(None)
        self.out.close()
        return tail + self.sink.take()
