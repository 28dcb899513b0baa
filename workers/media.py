"""What the media backends (``ocr``, ``stt``, ``tts``, ``upscale``) share.

A media backend is a worker backend (see :mod:`workers.base`) that does not chat: its
work arrives as ``Job`` messages and is done by ``run_job``, a generator that yields
``JobOutput`` messages (with binary frames wrapped in :class:`~workers.base.WithFrames`)
between pages, segments or tiles, so that the compute loop can cancel it there, and
ends with ``Done``.

Inputs are decoded here, in the worker, never in the gateway: a malformed file that
crashes a decoder costs one worker restart, not the gateway. Every decoding error
becomes a ``BackendError`` the user can act on (400, or 413 past a limit), and the
worker goes on serving.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Generator
from typing import Any, TypeVar

import msgspec
import zmq

from turnout.protocol.chat import ChatRequest
from turnout.workers.base import BackendError, GenContext, GenItem, ModelLoadError, WorkerSpec

OptT = TypeVar("OptT", bound=msgspec.Struct)


def parse_options(spec: WorkerSpec, kind: type[OptT]) -> OptT:
    """The ``[models.options]`` table of ``spec`` as ``kind``; a typo is a load error
    that names the field, rather than an option silently ignored."""
    try:
        return msgspec.convert(spec.options, kind)
    except msgspec.ValidationError as e:
        raise ModelLoadError(f"{spec.backend} backend options of model {spec.model!r}: {e}") from None


def input_bytes(frames: list[zmq.Frame]) -> memoryview:
    """The job's input file, without a copy (a single frame is the norm)."""
    if not frames:
        raise BackendError("invalid_request", "file: the uploaded file is empty")
    if len(frames) == 1:
        buf = frames[0].buffer
    else:
        buf = memoryview(b"".join(f.buffer for f in frames))
    if buf.nbytes == 0:
        raise BackendError("invalid_request", "file: the uploaded file is empty")
    return buf


class MediaBackend:
    """The part of the backend protocol a media worker does not use: chat."""

    models: list[str]
    max_concurrency: int
    kind = "media"

    def __init__(self, spec: WorkerSpec, max_concurrency: int) -> None:
        self.spec = spec
        self.models = [spec.model]
        self.max_concurrency = max_concurrency

    def count_tokens(self, req: ChatRequest) -> int:
        raise BackendError("invalid_request", f"model {self.spec.model!r} is a {self.kind} worker: it does not chat")

    def generate(self, request_id: str, req: ChatRequest, ctx: GenContext) -> Generator[GenItem, None, None]:
        raise BackendError("invalid_request", f"model {self.spec.model!r} is a {self.kind} worker: it does not chat")
        yield  # pragma: no cover  (makes this a generator)


# ------------------------------------------------------------------------- images

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def open_images(data: memoryview, max_pixels: int, max_pages: int = 0,
                limit_name: str = "media.max_image_pixels") -> Generator[Any, None, None]:
    """The pages of an uploaded image as RGB (or RGBA) Pillow images, one at a time
    (a multi-page TIFF or an animated GIF has several).

    Only the header is read before the size check, so an image over ``max_pixels``
    is refused before it is decoded (Pillow's own decompression-bomb guard is
    replaced by this limit, which the user configures)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our limit, not Pillow's, decides
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BackendError("invalid_request",
                           f"file: not an image turnout can read (supported: {', '.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError) as e:
        raise BackendError("invalid_request", f"file: cannot read the image: {e}") from None
    if img.format not in IMAGE_FORMATS:
        raise BackendError("invalid_request",
                           f"file: {img.format} images are not supported (supported: {', '.join(IMAGE_FORMATS)})")
    n_pages = int(getattr(img, "n_frames", 1) or 1)
    if max_pages and n_pages > max_pages:
        raise BackendError("too_large", f"file: the image has {n_pages} pages; the limit is {max_pages} (media.max_pages)")
    for page in range(n_pages):
        if page:
            img.seek(page)
        w, h = img.size
        if w <= 0 or h <= 0:
            raise BackendError("invalid_request", "file: the image is empty (0 pixels)")
        if max_pixels and w * h > max_pixels:
            raise BackendError("too_large",
                               f"file: the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} ({limit_name})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()
                out = img.convert("RGBA" if _has_alpha(img) else "RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise BackendError("invalid_request", f"file: the image is corrupt or truncated: {e}") from None
        yield out


def _has_alpha(img: Any) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def env_threads(default: int = 0) -> int:
    """Threads for a runtime: the option, else every core (a worker is one process
    per model; the supervisor decides how many run)."""
    return default or (os.cpu_count() or 1)
