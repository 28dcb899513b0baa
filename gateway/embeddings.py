"""``POST /v1/embeddings``, as OpenAI documents it, served by a local ``embed``
worker or by a cloud endpoint.

Body: ``input`` (a string or a list of up to 2048 non-empty strings; token arrays
are refused: they are ids of OpenAI's tokenizer), ``model``, ``encoding_format``
(``float``, default, or ``base64``: little-endian float32, what the OpenAI SDK
asks for), ``dimensions`` (only the model's own). Answer: ``{"object": "list",
"data": [{"object": "embedding", "index", "embedding"}], "model", "usage":
{"prompt_tokens", "total_tokens"}}``.

Which backend: the name as routing resolves it (``endpoint/model``, an alias, a
local model); an OpenAI or OpenAI-compatible endpoint gets the request as sent (key
added), a Gemini one ``batchEmbedContents``; any other name goes to the first local
``embed`` model, as OpenAI clients send their own model names.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import msgspec
import numpy as np
from aiohttp import web

from turnout.gateway.errors import ApiError, json_object
from turnout.gateway.media import job_outputs, openai_errors, pick_model
from turnout.gateway.planning import Target, resolve_target
from turnout.gateway.providers import provider_for
from turnout.gateway.providers.base import env_proxy, error_from_status
from turnout.gateway.routing import BUS, ROUTER, Router
from turnout.protocol import messages as m
from turnout.protocol.config import EndpointConfig

MAX_INPUTS = 2048
_enc = msgspec.json.Encoder()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_enc.encode(data), status=status, content_type="application/json")


def _texts(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if raw is None:
        raise ApiError(400, "input: Field required (a string or a list of strings)", param="input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise ApiError(400, "input: expected a non-empty string or a non-empty list of strings", param="input")
    if len(items) > MAX_INPUTS:
        raise ApiError(400, f"input: {len(items)} items; at most {MAX_INPUTS} per request", param="input")
    for i, x in enumerate(items):
        if isinstance(x, int) or (isinstance(x, list) and all(isinstance(y, int) for y in x)):
            raise ApiError(400, "input: token arrays are ids of OpenAI's tokenizer; send text to a local model",
                           param="input")
        if not isinstance(x, str) or not x:
            where = "input" if isinstance(raw, str) else f"input.{i}"
            raise ApiError(400, f"{where}: expected a non-empty string", param=where)
    return items


def _vector(v: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(v.astype("<f4").tobytes()).decode()
    return v.tolist()  # type: ignore[no-any-return]


@openai_errors
async def embeddings(request: web.Request) -> web.StreamResponse:
    """POST /v1/embeddings"""
    body = json_object(await request.read())
    texts = _texts(body)
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"encoding_format: {fmt!r} is not one of 'float', 'base64'", param="encoding_format")
    model = body.get("model") or ""
    if not isinstance(model, str):
        raise ApiError(400, "model: expected a string", param="model")
    bus = request.app[BUS]
    targets = resolve_target(bus.config, model) if model else []
    router = request.app.get(ROUTER)
    if targets and targets[0].endpoint is not None and router is not None:
        return await _cloud(router, targets[0], body, texts, fmt)
    mc = pick_model(bus, "embed", model if targets and targets[0].local is not None else "")
    st = await bus.open_job(mc, m.EmbedParams(texts=texts), [])
    vectors: np.ndarray | None = None
    tokens = 0
    async for out, frames in job_outputs(st):
        dims = int(out.media_type.rpartition("dims=")[2] or 0)
        vectors = np.frombuffer(b"".join(f.bytes for f in frames), dtype="<f4").reshape(len(texts), dims)
        tokens = out.tokens
    if vectors is None:
        raise ApiError(500, "the embed worker answered with no vectors")
    want = body.get("dimensions")
    if want is not None and want != vectors.shape[1]:
        raise ApiError(400, f"dimensions: {mc.name} makes {vectors.shape[1]}-dimensional embeddings only",
                       param="dimensions")
    return _json({"object": "list", "model": model or mc.name,
                  "data": [{"object": "embedding", "index": i, "embedding": _vector(v, fmt)} for i, v in enumerate(vectors)],
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _cloud(router: Router, t: Target, body: dict[str, Any], texts: list[str], fmt: str) -> web.StreamResponse:
    ep = t.endpoint
    assert ep is not None and router.http is not None
    kname = router.key_name(ep)
    key = router.keys.get(kname) if kname else None
    if ep.provider in ("openai", "openai_compatible"):
        url = (ep.base_url or "https://api.openai.com/v1").rstrip("/") + "/embeddings"
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
        status, data = await _post(router, ep, url, headers, {**body, "model": t.model}, key)
        return web.Response(body=data, status=status, content_type="application/json")
    if ep.provider == "gemini":
        base = (ep.base_url or "https://generativelanguage.googleapis.com").rstrip("/")
        url = f"{base}/v1beta/models/{t.model}:batchEmbedContents"
        headers = {"content-type": "application/json", **({"x-goog-api-key": key} if key else {})}
        req: dict[str, Any] = {"requests": [{"model": f"models/{t.model}", "content": {"parts": [{"text": x}]}}
                                            for x in texts]}
        if body.get("dimensions"):
            for r in req["requests"]:
                r["outputDimensionality"] = body["dimensions"]
        status, data = await _post(router, ep, url, headers, req, key)
        out = msgspec.json.decode(data)
        vecs = [np.asarray(e["values"], dtype=np.float32) for e in out.get("embeddings", [])]
        n = sum(len(x) for x in texts) // 4  # Gemini reports no token count here
        return _json({"object": "list", "model": body.get("model") or t.label,
                      "data": [{"object": "embedding", "index": i, "embedding": _vector(v, fmt)} for i, v in enumerate(vecs)],
                      "usage": {"prompt_tokens": n, "total_tokens": n}})
    raise ApiError(400, f"model: {t.label} is an {ep.provider} endpoint, which has no embeddings API", param="model")


async def _post(router: Router, ep: EndpointConfig, url: str, headers: dict[str, str], body: dict[str, Any],
                key: str | None) -> tuple[int, bytes]:
    """POST to an endpoint; a non-200 becomes the ApiError the chat routes give."""
    assert router.http is not None
    proxy, proxy_auth = env_proxy(url)
    timeout = aiohttp.ClientTimeout(total=ep.timeout_s, sock_connect=ep.connect_timeout_s)
    try:
        async with router.http.post(url, data=_enc.encode(body), headers=headers, timeout=timeout,
                                    proxy=proxy, proxy_auth=proxy_auth) as resp:
            data = await resp.read()
            if resp.status != 200:
                p = provider_for(ep.provider)
                msg = p.error_message(data)
                if key:
                    msg = msg.replace(key, "[key]")
                raise error_from_status(resp.status, p.kind, ep.name, router.key_name(ep), msg[:2000],
                                        resp.headers).api_error()
            return resp.status, data
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise ApiError(502, f"cannot reach {ep.provider} endpoint {ep.name!r}: {type(e).__name__}") from None


def register_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", embeddings)
