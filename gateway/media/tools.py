"""The media operations as plain functions for the MCP tools, with the files they
read and write confined."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import structlog

from turnout.gateway.bus import Bus
from turnout.gateway.errors import ApiError
from turnout.gateway.media.audio import speech_chunks, transcribe, tts_model, wav_header
from turnout.gateway.media.common import decode_base64, pick_model
from turnout.gateway.media.images import ocr, upscale
from turnout.protocol import messages as m

log = structlog.get_logger()


# -------------------------------------------------------------------- MCP tools
#
# Plain async functions for the MCP server to register (it holds the bus). Inputs
# are a file path or base64 (a data: URL too); outputs are text, or the path of a
# file written where the caller says (a new temporary file by default).
#
# A caller of these tools is whoever can reach /mcp: a model following a prompt
# injection, say. So paths are confined (issue 14): a file read or written must be,
# once symlinks and ``..`` are resolved, inside one of ``[mcp] media_dirs`` (default:
# the home directory and the system temp directory), with no hidden component below
# it (~/.ssh, ~/.config: where keys live); an output must carry the tool's own
# extension (.wav, .png) and is never written through a symlink.


def media_roots(bus: Bus) -> list[Path]:
    dirs = bus.config.mcp.media_dirs or [str(Path.home()), tempfile.gettempdir()]
    return [Path(d).expanduser().resolve() for d in dirs]


def _confine(bus: Bus, real: Path, given: str, param: str) -> None:
    roots = media_roots(bus)
    for root in roots:
        if real == root or real.is_relative_to(root):
            if any(part.startswith(".") for part in real.relative_to(root).parts):
                raise ApiError(403, f"{param}: {given!r} is or is inside a hidden file or directory, which the media "
                                    f"tools do not read or write", param=param)
            return
    raise ApiError(403, f"{param}: {given!r} is outside the directories the media tools may use "
                        f"({', '.join(str(r) for r in roots)}; [mcp] media_dirs sets them)", param=param)


def _load_input(bus: Bus, value: str, param: str = "input") -> bytes:
    if value.startswith("data:"):
        return decode_base64(value, param)
    p = Path(value).expanduser()
    if len(value) < 4096 and (os.sep in value or p.suffix or p.exists()):
        real = p.resolve()
        _confine(bus, real, value, param)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise ApiError(400, f"{param}: {value!r} is not a readable file (pass a path or base64)",
                           param=param) from None
        with os.fdopen(fd, "rb") as f:
            try:
                return f.read()
            except IsADirectoryError:
                raise ApiError(400, f"{param}: {value!r} is a directory, not a file", param=param) from None
    return decode_base64(value, param)


def _output_target(bus: Bus, output_path: str, suffix: str) -> Path | None:
    """Where the caller asked the output to go, checked (see above); None: a new
    temporary file."""
    if not output_path:
        return None
    given = Path(output_path).expanduser()
    if not given.name.lower().endswith(suffix):
        raise ApiError(400, f"output_path: {output_path!r} must end with {suffix}", param="output_path")
    real = given.parent.resolve() / given.name
    _confine(bus, real, output_path, "output_path")
    return real


def _write_output(bus: Bus, output_path: str, suffix: str, data: bytes) -> str:
    """Write ``data`` to :func:`_output_target` (never through a symlink); returns
    the path written."""
    real = _output_target(bus, output_path, suffix)
    if real is None:
        fd, path = tempfile.mkstemp(prefix="turnout-", suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    try:
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise ApiError(400, f"output_path: cannot write {output_path!r}: {e.strerror}", param="output_path") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(real)


async def ocr_image(bus: Bus, image: str, model: str = "") -> str:
    """MCP ``ocr_image``: the text in an image (path or base64)."""
    data = _load_input(bus, image, "image")
    return (await ocr(bus, pick_model(bus, "ocr", model), data)).text


async def transcribe_audio(bus: Bus, audio: str, language: str = "", model: str = "") -> str:
    """MCP ``transcribe_audio``: the text spoken in an audio file (path or base64)."""
    data = _load_input(bus, audio, "audio")
    t = await transcribe(bus, pick_model(bus, "stt", model), data, m.SttParams(language=language))
    return t.text


async def speak_text(bus: Bus, text: str, output_path: str = "", voice: str = "", speed: float = 1.0,
                     model: str = "") -> str:
    """MCP ``speak_text``: speak ``text`` into a WAV file; returns its path."""
    if not text.strip():
        raise ApiError(400, "text: nothing to speak", param="text")
    _output_target(bus, output_path, ".wav")  # refused before any work, not after
    pcm = bytearray()
    rate = 22050
    async for chunk, chunk_rate in speech_chunks(bus, tts_model(bus, model, voice),
                                                 m.TtsParams(text=text, voice=voice, speed=speed)):
        pcm += chunk
        rate = chunk_rate
    return _write_output(bus, output_path, ".wav", wav_header(rate, len(pcm)) + bytes(pcm))


async def upscale_image(bus: Bus, image: str, scale: int = 2, output_path: str = "", model: str = "") -> str:
    """MCP ``upscale_image``: upscale an image (path or base64) 2x or 4x into a PNG
    file; returns its path."""
    data = _load_input(bus, image, "image")
    _output_target(bus, output_path, ".png")
    data, _, _, _ = await upscale(bus, pick_model(bus, "upscale", model), data, scale, "png")
    return _write_output(bus, output_path, ".png", data)
