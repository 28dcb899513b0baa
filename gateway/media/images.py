"""OCR (``/v1/ocr``), upscaling (``/v1/images/upscale``) and the OCR of images
sent to a chat model that cannot see."""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from aiohttp import web

from turnout.gateway.appkeys import BUS
from turnout.gateway.bus import Bus
from turnout.gateway.errors import ApiError
from turnout.gateway.media.common import (
    form_choice,
    job_outputs,
    need_file,
    openai_errors,
    pick_model,
    read_upload,
)
from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, ImagePart, Message, TextPart, ToolResultPart
from turnout.protocol.config import ModelConfig

log = structlog.get_logger()
_json = msgspec.json.Encoder()


# --------------------------------------------------------------------------- OCR


@dataclass
class OcrResult:
    text: str
    pages: list[dict[str, Any]]


async def ocr(bus: Bus, mc: ModelConfig, image: bytes) -> OcrResult:
    limits = bus.config.media
    st = await bus.open_job(mc, m.OcrParams(max_pixels=limits.max_image_pixels, max_pages=limits.max_pages), [image])
    pages: list[dict[str, Any]] = []
    async for out, _ in job_outputs(st):
        pages.append({
            "page": out.pages, "width": out.width, "height": out.height,
            "text": "\n".join(ln.text for ln in out.lines),
            "lines": [{"text": ln.text, "confidence": ln.confidence, "box": ln.box} for ln in out.lines],
        })
    return OcrResult("\n\n".join(p["text"] for p in pages), pages)


@openai_errors
async def ocr_route(request: web.Request) -> web.StreamResponse:
    """POST /v1/ocr"""
    bus = request.app[BUS]
    up = await read_upload(request, ("file", "image"), base64_fields=("file", "image"))
    image = need_file(up, ("file", "image"))
    mc = pick_model(bus, "ocr", up.get("model"))
    fmt = form_choice(up, "response_format", "json", ("json", "text"))
    r = await ocr(bus, mc, image)
    if fmt == "text":
        return web.Response(text=r.text + "\n", content_type="text/plain")
    return web.Response(body=_json.encode({"object": "ocr", "model": mc.name, "text": r.text, "pages": r.pages}),
                        content_type="application/json")


# ----------------------------------------------------------------------- upscale


async def upscale(bus: Bus, mc: ModelConfig, image: bytes, scale: int = 2, output_format: str = "png") -> tuple[bytes, str, int, int]:
    """The upscaled image: bytes, media type, width, height."""
    params = m.UpscaleParams(scale=scale, output_format=output_format, max_pixels=bus.config.media.max_upscale_pixels)
    st = await bus.open_job(mc, params, [image])
    result: tuple[bytes, str, int, int] | None = None
    async for out, frames in job_outputs(st):
        if frames:
            result = (frames[0].bytes if len(frames) == 1 else b"".join(f.bytes for f in frames),
                      out.media_type, out.width, out.height)
    if result is None:
        raise ApiError(500, "the upscale worker answered without an image")
    return result


@openai_errors
async def upscale_route(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/upscale"""
    bus = request.app[BUS]
    up = await read_upload(request, ("image", "file"), base64_fields=("image", "file"))
    image = need_file(up, ("image", "file"))
    mc = pick_model(bus, "upscale", up.get("model"))
    scale_s = up.get("scale", "2")
    if scale_s not in ("2", "4"):
        raise ApiError(400, f"scale: {scale_s!r} is not supported; use 2 or 4", param="scale")
    out_fmt = form_choice(up, "output_format", "png", ("png", "jpeg", "webp"))
    resp_fmt = form_choice(up, "response_format", "binary", ("binary", "b64_json"))
    data, media_type, w, h = await upscale(bus, mc, image, int(scale_s), out_fmt)
    if resp_fmt == "b64_json":
        return web.Response(body=_json.encode({"created": int(time.time()), "output_format": out_fmt,
                                               "size": f"{w}x{h}", "data": [{"b64_json": base64.b64encode(data).decode()}]}),
                            content_type="application/json")
    return web.Response(body=data, content_type=media_type, headers={"X-Image-Size": f"{w}x{h}"})


# ------------------------------------------------------------------ chat images


async def ocr_chat_images(bus: Bus, req: ChatRequest) -> ChatRequest:
    """``req`` with every inline image replaced by its OCR text, for a local model
    that cannot see (``media.ocr_images = true``). An image that cannot be read
    becomes a note saying so, rather than failing the chat request."""
    mc = pick_model(bus, "ocr")

    async def convert(p: ImagePart) -> TextPart:
        if not p.data:
            return TextPart(f"[image at {p.url or 'an unknown place'}: not inline, so not read]")
        try:
            r = await ocr(bus, mc, base64.b64decode(p.data))
        except (ApiError, binascii.Error, ValueError) as e:
            return TextPart(f"[image: could not be read: {getattr(e, 'message', e)}]")
        return TextPart(f"[image, text read by OCR:]\n{r.text}" if r.text else "[image: no text in it]")

    messages: list[Message] = []
    for msg in req.messages:
        parts: list[Any] = []
        for p in msg.content:
            if isinstance(p, ImagePart):
                parts.append(await convert(p))
            elif isinstance(p, ToolResultPart) and any(isinstance(c, ImagePart) for c in p.content):
                inner = [await convert(c) if isinstance(c, ImagePart) else c for c in p.content]
                parts.append(msgspec.structs.replace(p, content=inner))
            else:
                parts.append(p)
        messages.append(msgspec.structs.replace(msg, content=parts))
    return msgspec.structs.replace(req, messages=messages)
