"""``GET /openapi.json``: an OpenAPI 3.1 description of the gateway's HTTP API.

Request bodies come from the very msgspec types the routes decode with
(``MessagesRequest``, ``ChatCompletionRequest``, ...), so the description cannot
drift from what is accepted; the routes that read a plain JSON object (Responses,
Embeddings, speech, OCR and upscale as JSON) are described by the Structs below,
written from their parsers. Errors are described in each API's shape: the fuzz
tests (tests/e2e/test_fuzz_api.py) check every answer against it.

Served without the token (like /healthz): it holds nothing about the instance.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from turnout.gateway.anthropic import CountTokensRequest, MessagesRequest
from turnout.gateway.openai_chat import ChatCompletionRequest


class ResponsesRequest(msgspec.Struct, kw_only=True):
    """OpenAI Responses (gateway/responses.py reads these fields)."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    """OpenAI Embeddings (gateway/embeddings.py)."""

    input: str | list[Any]  # strings, or token ids (lists of ints)
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class SpeechRequest(msgspec.Struct, kw_only=True):
    """OpenAI speech (gateway/media/)."""

    input: str
    model: str = ""
    voice: str = ""
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    stream_format: Literal["audio", "sse"] = "audio"
    speed: float = 1.0
    instructions: str | None = None


class ImageRequest(msgspec.Struct, kw_only=True):
    """OCR and upscale with the image as base64 or a data: URL (gateway/media/)."""

    image: str
    model: str = ""
    scale: int | None = None
    response_format: str | None = None


class SessionOverride(msgspec.Struct):
    """PUT /admin/sessions/{sid}."""

    target: str


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct):
    type: Literal["error"]
    error: AnthropicErrorDetail


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    error: OpenAIErrorDetail


_BODIES: dict[str, Any] = {
    "MessagesRequest": MessagesRequest, "CountTokensRequest": CountTokensRequest,
    "ChatCompletionRequest": ChatCompletionRequest, "ResponsesRequest": ResponsesRequest,
    "EmbeddingsRequest": EmbeddingsRequest, "SpeechRequest": SpeechRequest, "ImageRequest": ImageRequest,
    "SessionOverride": SessionOverride, "AnthropicError": AnthropicError, "OpenAIError": OpenAIError,
}

# (method, path, summary, request body schema, error shape)
_OPS: list[tuple[str, str, str, str | None, str]] = [
    ("post", "/v1/messages", "Anthropic Messages (stream and not)", "MessagesRequest", "AnthropicError"),
    ("post", "/v1/messages/count_tokens", "Anthropic token counting", "CountTokensRequest", "AnthropicError"),
    ("post", "/v1/chat/completions", "OpenAI Chat Completions (stream and not)", "ChatCompletionRequest", "OpenAIError"),
    ("post", "/v1/responses", "OpenAI Responses (stream and not)", "ResponsesRequest", "OpenAIError"),
    ("post", "/v1/embeddings", "OpenAI Embeddings", "EmbeddingsRequest", "OpenAIError"),
    ("post", "/v1/audio/speech", "Text to speech", "SpeechRequest", "OpenAIError"),
    ("post", "/v1/ocr", "Text in an image (JSON body; multipart also accepted)", "ImageRequest", "OpenAIError"),
    ("post", "/v1/images/upscale", "Upscale an image (JSON body; multipart also accepted)", "ImageRequest",
     "OpenAIError"),
    ("get", "/v1/models", "Models (OpenAI's shape; Anthropic's with anthropic-version)", None, "OpenAIError"),
    ("get", "/v1/models/{model_id}", "One model", None, "OpenAIError"),
    ("get", "/admin/workers", "The supervisor's worker table", None, "AnthropicError"),
    ("get", "/admin/endpoints", "Endpoints, routing and sessions", None, "AnthropicError"),
    ("get", "/admin/sessions/{sid}", "A session's routing override", None, "AnthropicError"),
    ("put", "/admin/sessions/{sid}", "Route a session to a target", "SessionOverride", "AnthropicError"),
    ("delete", "/admin/sessions/{sid}", "Clear a session's override", None, "AnthropicError"),
    ("get", "/healthz", "Ready once every configured worker is (no token)", None, "AnthropicError"),
    ("get", "/metrics", "Prometheus text format ([metrics] enabled)", None, "AnthropicError"),
]

_ERROR_STATUSES = ("400", "401", "403", "404", "405", "413", "429", "500", "503", "529")


def document(version: str = "1") -> dict[str, Any]:
    """The OpenAPI document (plain JSON-able data)."""
    _, components = msgspec.json.schema_components(list(_BODIES.values()),
                                                   ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, err in _OPS:
        ref = {"$ref": f"#/components/schemas/{err}"}
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {
                "200": {"description": "the answer (JSON, or text/event-stream when streamed)",
                        "content": {"application/json": {"schema": {}}, "text/event-stream": {"schema": {}}}},
                **{s: {"description": "an error in the API's own shape",
                       "content": {"application/json": {"schema": ref}}} for s in _ERROR_STATUSES},
            },
        }
        if path != "/healthz":
            op["security"] = [{"apiKey": []}, {"bearer": []}]
        params = [p[1:-1] for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                for p in params]
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{_component_name(body, components)}"}}}}
        if path in ("/v1/messages", "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/healthz"):
            op["responses"]["200"]["content"] = {"application/json": {"schema": {"type": "object"}},
                                                  **({"text/event-stream": {"schema": {}}}
                                                     if path not in ("/v1/embeddings", "/healthz") else {})}
        if path == "/metrics":
            op["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "turnout", "version": version,
                 "description": "One local base URL for Anthropic and OpenAI API clients (see the README)."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _component_name(name: str, components: dict[str, Any]) -> str:
    if name in components:
        return name
    raise KeyError(name)
