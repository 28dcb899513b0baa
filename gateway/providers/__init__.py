"""Cloud providers behind the same base URL: each module turns a canonical
:class:`~protocol.chat.ChatRequest` into its provider's HTTP request and its
provider's stream back into turnout's stream messages.

* :mod:`gateway.providers.anthropic`: the Messages API (the client's body passed
  through untouched when the client speaks Anthropic too);
* :mod:`gateway.providers.openai`: Chat Completions, for OpenAI and every
  OpenAI-compatible server (vLLM, Ollama, LM Studio, llama-server, OpenRouter);
* :mod:`gateway.providers.gemini`: ``generateContent`` / ``streamGenerateContent``.
"""

from __future__ import annotations

from turnout.gateway.providers.base import Provider
from turnout.protocol.config import PROVIDERS

__all__ = ["DEFAULT_BASE_URLS", "PROVIDERS", "provider_for"]


def provider_for(kind: str) -> Provider:
    if kind == "anthropic":
        from turnout.gateway.providers.anthropic import AnthropicProvider

        return AnthropicProvider()
    if kind in ("openai", "openai_compatible"):
        from turnout.gateway.providers.openai import OpenAIProvider

        return OpenAIProvider(compatible=kind == "openai_compatible")
    if kind == "gemini":
        from turnout.gateway.providers.gemini import GeminiProvider

        return GeminiProvider()
    raise ValueError(f"unknown provider {kind!r}: use anthropic, openai, gemini or openai_compatible")


DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com",
    "openai_compatible": "http://127.0.0.1:8000/v1",
}
