"""Routing decisions as a pure function of config, request and override."""

from __future__ import annotations

import msgspec

from turnout.gateway.planning import estimate_tokens, plan
from turnout.protocol.chat import ChatRequest, ImagePart, Message, TextPart, ThinkingConfig, Tool
from turnout.protocol.config import Config, validate

CFG = msgspec.toml.decode(b"""
[[models]]
name = "local"
backend = "fake"
aliases = ["claude-*"]

[[endpoints]]
name = "ant"
provider = "anthropic"
[[endpoints.models]]
name = "claude-big"
context_window = 200000

[[endpoints]]
name = "oai"
provider = "openai"
[[endpoints.models]]
name = "gpt-small"
context_window = 1000
vision = false
[[endpoints.models]]
name = "gpt-big"
context_window = 1000000

[[endpoints]]
name = "gem"
provider = "gemini"
[[endpoints.models]]
name = "gemini-flash"

[routing]
default = "oai/gpt-big"
fallback = ["local"]
[routing.aliases]
opus = "ant/claude-big"
haiku = "gem/gemini-flash"
"team-*" = ["oai/gpt-small", "gem/gemini-flash"]

[[routing.rules]]
when = "thinking"
to = "ant/claude-big"
models = ["claude-*"]
""", type=Config)


def req(model: str, text: str = "hi", **kw: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", [TextPart(text)])], max_tokens=4096,
                       tools=[Tool("Bash")], **kw)  # type: ignore[arg-type]


def labels(r: ChatRequest, override: str | None = None) -> list[str]:
    return [t.label for t in plan(CFG, r, override)]


def test_claude_code_family_aliases() -> None:
    assert labels(req("claude-opus-4-5-20251101"))[0] == "ant/claude-big"
    assert labels(req("claude-haiku-4-5-20251001"))[0] == "gem/gemini-flash"
    assert labels(req("opus"))[0] == "ant/claude-big"
    # sonnet has no alias: the local model's glob serves it.
    assert labels(req("claude-sonnet-4-6")) == ["local"]


def test_provider_slash_model_endpoint_model_and_default() -> None:
    assert labels(req("gem/gemini-2.5-pro"))[0] == "gem/gemini-2.5-pro"  # any model of a known endpoint
    assert labels(req("gpt-big"))[0] == "oai/gpt-big"
    assert labels(req("something-else")) == ["oai/gpt-big", "local"]  # default, then fallback


def test_glob_alias_keeps_order_as_fallback_chain() -> None:
    assert labels(req("team-x")) == ["oai/gpt-small", "gem/gemini-flash", "local"]


def test_too_long_for_a_window_skips_that_target() -> None:
    long = "word " * 4000  # ~5000 tokens > gpt-small's 1000
    assert estimate_tokens(req("team-x", long)) > 1000
    assert labels(req("team-x", long)) == ["gem/gemini-flash", "local"]


def test_images_skip_a_model_that_cannot_see() -> None:
    r = req("team-x")
    r.messages[0].content.append(ImagePart("image/png", "iVBORw0KGgo="))
    assert labels(r)[0] == "gem/gemini-flash"


def test_thinking_rule_applies_to_matching_names_only() -> None:
    think = ThinkingConfig("enabled", 2048)
    assert labels(req("claude-sonnet-4-6", thinking=think))[0] == "ant/claude-big"
    assert labels(req("team-x", thinking=think))[0] == "oai/gpt-small"


def test_session_override_comes_first_and_keeps_fallbacks() -> None:
    assert labels(req("claude-opus-4-5"), override="haiku")[:2] == ["gem/gemini-flash", "ant/claude-big"]


def test_background_rule() -> None:
    cfg = msgspec.structs.replace(CFG)
    cfg.routing = msgspec.toml.decode(b'[[rules]]\nwhen = "background"\nto = "gem/gemini-flash"\n',
                                      type=type(CFG.routing))
    small = ChatRequest(model="claude-sonnet-4-6", messages=[Message("user", [TextPart("title?")])], max_tokens=512)
    assert plan(cfg, small)[0].label == "gem/gemini-flash"
    assert plan(cfg, req("claude-sonnet-4-6"))[0].label == "local"  # tools, 4096 tokens: main work


def test_unknown_name_without_default_plans_nothing() -> None:
    cfg = msgspec.structs.replace(CFG)
    cfg.routing = type(CFG.routing)()
    assert plan(cfg, req("nothing-serves-this")) == []


def test_config_problems_are_named() -> None:
    toml = b'[[endpoints]]\nname = "x"\nprovider = "openai"\n[[endpoints]]\nname = "x"\nprovider = "gemini"\n'
    problems = validate(msgspec.toml.decode(toml, type=Config))
    assert problems and "twice" in problems[0]


def test_old_config_without_endpoints_still_loads() -> None:
    cfg = msgspec.toml.decode(b'[[models]]\nname = "fake"\nbackend = "fake"\n', type=Config)
    assert cfg.endpoints == [] and cfg.routing.aliases == {}
