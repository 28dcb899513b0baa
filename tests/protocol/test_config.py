"""Config file parsing and model resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.protocol.config import (
    BROWSER_MODEL,
    Config,
    ConfigError,
    config_path,
    default_config,
    gateway_url,
    load_config,
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_models_and_aliases(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[server]
port = 9999
[[models]]
name = "a"
backend = "fake"
aliases = ["alpha", "claude-*"]
[[models]]
name = "b"
backend = "fake"
aliases = ["claude-haiku-*"]
"""))
    assert cfg.server.port == 9999
    assert cfg.resolve_model("a").name == "a"  # type: ignore[union-attr]
    assert cfg.resolve_model("alpha").name == "a"  # type: ignore[union-attr]
    assert cfg.resolve_model("claude-opus-4-8").name == "a"  # type: ignore[union-attr]
    assert cfg.resolve_model("nothing") is None


def test_exact_alias_beats_glob(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[[models]]
name = "a"
backend = "fake"
aliases = ["claude-*"]
[[models]]
name = "b"
backend = "fake"
aliases = ["claude-haiku-4-5"]
"""))
    assert cfg.resolve_model("claude-haiku-4-5").name == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "needle"), [
    ("[[models]]\nbackend = 'fake'\n", "name"),
    ("[server]\nprot = 1\n", "prot"),
    ("[[models]]\nname='a'\nbackend='fake'\n[[models]]\nname='a'\nbackend='fake'\n", "unique"),
    ("[server\n", "TOML"),
    ("[server]\nport = 'x'\n", "port"),
    ("[metrics]\nport = 70000\n", "metrics.port must be between 0"),
    ("[server]\nport = 9100\n[metrics]\nport = 9100\n", "metrics.port must differ from server.port"),
    ("[metrics]\nenable = true\n", "enable"),
])
def test_bad_config_says_what(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    assert needle in str(ei.value)


@pytest.mark.parametrize(("text", "needle"), [
    ('[[models]]\nname = "m"\nbackend = "llama-cpp"\n',
     "models.m.backend: 'llama-cpp' is not one of fake, llama_cpp, mlx_lm, ocr, stt, tts, upscale, embed"),
    ('[[endpoints]]\nname = "x"\nprovider = "azure"\n',
     "endpoints.x.provider: 'azure' is not one of anthropic, openai, gemini, openai_compatible"),
    ('[[routing.rules]]\nwhen = "sometimes"\nto = "x"\n',
     "routing.rules.0.when: 'sometimes' is not one of background, thinking, long_context, images"),
    ("[server]\nworker_routing = 'random'\n", "server.worker_routing: 'random' is not one of cache_aware, least_loaded"),
    ('[[endpoints]]\nname = "x"\nprovider = "openai"\n[[endpoints]]\nname = "x"\nprovider = "gemini"\n',
     "endpoints: the name 'x' is used twice"),
    ('[[endpoints]]\nname = "a/b"\nprovider = "openai"\n', "endpoints.a/b: a name cannot contain '/'"),
])
def test_a_typo_in_a_vocabulary_fails_at_load_naming_field_and_choices(tmp_path: Path, text: str,
                                                                         needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    assert needle in str(ei.value)


def test_config_file_is_found_by_flag_then_env_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path(None) is None  # nothing: the built-in defaults
    xdg = tmp_path / "xdg" / "turnout" / "config.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("[server]\nport = 9100\n")
    assert config_path(None) == str(xdg)
    monkeypatch.setenv("TURNOUT_CONFIG", "/env.toml")
    assert config_path(None) == "/env.toml"
    assert config_path("/flag.toml") == "/flag.toml"


def test_gateway_url_from_env_else_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_URL", "http://h:1/")
    assert gateway_url() == "http://h:1"
    monkeypatch.delenv("TURNOUT_URL")
    c = write(tmp_path, "[server]\nhost = '0.0.0.0'\nport = 9100\n")
    assert gateway_url(config=str(c)) == "http://127.0.0.1:9100"
    assert gateway_url(9200, str(c)) == "http://127.0.0.1:9200"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_default_config_serves_claude_ids() -> None:
    cfg = default_config()
    assert cfg.resolve_model("claude-opus-4-8") is not None
    assert cfg.models[0].backend == "llama_cpp"


def test_default_config_has_every_media_route_loaded_on_demand() -> None:
    """No config file: each media backend has its bundled model, kept off until its
    route's first request (no worker at start), and OpenAI's model names reach it."""
    cfg = default_config()
    media = {m.backend: m for m in cfg.models if m.backend not in ("llama_cpp", "browser")}
    assert set(media) == {"embed", "ocr", "stt", "tts", "upscale"}
    for mc in media.values():
        assert mc.workers == 0 and mc.loads_on_demand() and mc.path == "", mc
    for name, backend in [("whisper-1", "stt"), ("tts-1", "tts"), ("text-embedding-3-small", "embed"),
                          ("rapidocr", "ocr"), ("realesrgan", "upscale")]:
        found = cfg.resolve_model(name)
        assert found is not None and found.backend == backend, (name, found)
    assert cfg.resolve_model("claude-sonnet-4-5").backend == "llama_cpp"  # type: ignore[union-attr]


def test_metrics_are_on_without_a_listener_of_their_own_by_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[metrics]\nport = 9464\n"))
    assert cfg.metrics.enabled and cfg.metrics.port == 9464
    assert load_config(write(tmp_path, "")).metrics.port == 0


def test_every_config_gets_the_browser_worker_loaded_on_demand(tmp_path: Path) -> None:
    """The MCP browser tools' worker (issue 18): in the defaults and in a config file
    that declares none, with no worker until a browser tool asks; not with
    ``[browser] enabled = false``, and not twice when the file declares one."""
    for cfg in (default_config(), _load(tmp_path, '[[models]]\nname = "fake"\nbackend = "fake"\n')):
        found = [mc for mc in cfg.models if mc.backend == "browser"]
        assert [mc.name for mc in found] == [BROWSER_MODEL]
        assert found[0].workers == 0 and found[0].loads_on_demand()
    off = _load(tmp_path, '[browser]\nenabled = false\n[[models]]\nname = "fake"\nbackend = "fake"\n')
    assert [mc.backend for mc in off.models] == ["fake"]
    own = _load(tmp_path, '[[models]]\nname = "web"\nbackend = "browser"\n[browser]\nallow = ["https://*.example.com"]\n')
    assert [mc.name for mc in own.models] == ["web"] and own.browser.allow == ["https://*.example.com"]
    assert own.browser.evaluate is False


def test_browser_section_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"browser\.action_timeout_s"):
        _load(tmp_path, "[browser]\naction_timeout_s = 0\n")
    with pytest.raises(ConfigError, match="evaluat"):
        _load(tmp_path, "[browser]\nevaluat = true\n")


def _load(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "browser.toml"
    p.write_text(text)
    return load_config(p)
