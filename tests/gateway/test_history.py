"""Thinking blocks on a provider switch: each provider gets back only its own."""

from __future__ import annotations

from turnout.gateway.history import make_safe, signature_owner, tag_signature
from turnout.protocol.chat import ChatRequest, Message, TextPart, ThinkingPart
from turnout.workers.signing import Signer


def test_local_signatures_are_recognised_and_never_sent_to_a_cloud() -> None:
    local_sig = Signer(b"k" * 32).sign("local thought")
    anthropic_sig = "A" * 200
    assert signature_owner(local_sig) == "local"
    assert signature_owner(anthropic_sig) == "anthropic"
    assert signature_owner(tag_signature("gemini", "xyz")) == "gemini"
    req = ChatRequest(model="m", max_tokens=5, messages=[
        Message("user", [TextPart("q")]),
        Message("assistant", [ThinkingPart("local thought", local_sig), ThinkingPart("cloud thought", anthropic_sig),
                              TextPart("a")]),
        Message("user", [TextPart("again")])])
    to_anthropic = make_safe(req, "anthropic").messages[1].content
    assert [p.thinking for p in to_anthropic if isinstance(p, ThinkingPart)] == ["cloud thought"]
    assert not any(isinstance(p, ThinkingPart) for p in make_safe(req, "openai").messages[1].content)
