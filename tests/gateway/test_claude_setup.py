"""``turnout claude setup/remove``: merge into the user's files, restore exactly."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import other_user
from turnout.cli.claude import claude_argv
from turnout.gateway.claude_setup import (
    Paths,
    SetupError,
    apply_remove,
    apply_setup,
    fitted_limits,
    local_windows,
    mcp_entry,
    model_options,
    pick_models,
    served_windows,
    settings_env,
)
from turnout.protocol.config import (
    Config,
    EndpointConfig,
    EndpointModel,
    ModelConfig,
    RoutingConfig,
)

URL = "http://127.0.0.1:8765"
TOKEN = "tt-secret-token-value"


def cfg() -> Config:
    return Config(
        models=[ModelConfig(name="gemma3-270m", backend="llama_cpp", context_window=32_768),
                ModelConfig(name="ocr", backend="ocr")],
        endpoints=[EndpointConfig(name="gemini", provider="gemini", models=[
                       EndpointModel("gemini-2.0-flash", 1_048_576, 0.1, 0.4)]),
                   EndpointConfig(name="anthropic", provider="anthropic", models=[
                       EndpointModel("claude-sonnet-4-5", 200_000, 3, 15)])],
        routing=RoutingConfig(default="anthropic/claude-sonnet-4-5", aliases={"fast": "gemini/gemini-2.0-flash",
                                                                             "claude-*": "gemma3-270m"}))


def env() -> dict[str, str]:
    c = cfg()
    return settings_env(URL, TOKEN, pick_models(model_options(c), c))


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / ".claude" / "settings.json", tmp_path / ".claude.json", tmp_path / "state")


def test_options_and_picks_cover_every_family_with_routable_names() -> None:
    c = cfg()
    opts = model_options(c)
    assert [o.name for o in opts] == ["gemma3-270m", "gemini/gemini-2.0-flash", "anthropic/claude-sonnet-4-5", "fast"]
    picks = pick_models(opts, c)
    assert {k: v.name for k, v in picks.items()} == {
        "SONNET": "anthropic/claude-sonnet-4-5", "OPUS": "gemini/gemini-2.0-flash", "HAIKU": "gemma3-270m",
        "CUSTOM": "fast"}  # the one name not already in the picker
    assert picks["OPUS"].description == "turnout: gemini, 1M window, $0.1/$0.4 per Mtok"
    with pytest.raises(SetupError, match="--sonnet 'nope'"):
        pick_models(opts, c, sonnet="nope")


def test_env_has_every_picker_key_and_limits_fitted_to_the_main_model() -> None:
    e = env()
    for fam in ("OPUS", "SONNET", "HAIKU"):
        assert e[f"ANTHROPIC_DEFAULT_{fam}_MODEL"] and e[f"ANTHROPIC_DEFAULT_{fam}_MODEL_NAME"]
        assert e[f"ANTHROPIC_DEFAULT_{fam}_MODEL_DESCRIPTION"].startswith("turnout:")
    assert e["ANTHROPIC_CUSTOM_MODEL_OPTION"] and e["ANTHROPIC_CUSTOM_MODEL_OPTION_DESCRIPTION"]
    assert e["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "200000"
    assert e["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "25000"
    assert fitted_limits(32_768) == {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": "32768", "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "4096"}
    assert fitted_limits(0) == {}


def test_the_default_models_window_is_read_from_its_file_before_it_is_assembled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No config file, nothing assembled yet: the bundled model's header (in its
    first chunk package) gives 32K, capped as the llama_cpp worker caps it."""
    from turnout.protocol.config import default_config

    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(tmp_path / "empty-cache"))
    c = default_config()
    wins = local_windows(c)
    assert wins == {"gemma3-270m": 32_768}
    e = settings_env(URL, TOKEN, pick_models(model_options(c, wins), c))
    assert e["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "gemma3-270m"
    assert e["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "32768" and e["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "4096"
    assert not (tmp_path / "empty-cache").exists()  # nothing assembled to find it out


def test_a_local_gguf_window_follows_the_workers_caps(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
    from tiny_gguf import write_tiny_gguf

    gguf = str(write_tiny_gguf(tmp_path / "t.gguf", context_length=65_536))

    def win(**kw: object) -> int:
        c = Config(models=[ModelConfig(name="m", backend="llama_cpp", path=gguf, **kw)])  # type: ignore[arg-type]
        return local_windows(c).get("m", 0)

    assert win() == 32_768  # the worker's n_ctx_max
    assert win(options={"n_ctx_max": 65_536}) == 65_536
    assert win(options={"n_ctx": 8192}) == 8192
    assert win(options={"n_ctx": 999_999}) == 65_536  # never past the trained context
    assert win(context_window=4096) == 0  # the config says it: nothing to read
    assert local_windows(Config(models=[ModelConfig(name="m", backend="llama_cpp", path=str(tmp_path / "no.gguf"))])) == {}


def test_other_windows_come_from_the_running_gateway(turnout_factory: Any) -> None:
    """A model whose file setup cannot read (here the fake backend): what the
    gateway's /v1/models says its worker loaded."""
    t = turnout_factory('[[models]]\nname = "fake"\nbackend = "fake"\n[models.options]\ncontext_window = 12345\n')
    c = Config(models=[ModelConfig(name="fake", backend="fake")])
    assert local_windows(c, t.base_url, t.token) == {"fake": 12_345}
    assert local_windows(c, t.base_url, "wrong-token") == {}
    assert served_windows("http://127.0.0.1:9", TOKEN, timeout=1) == {}  # nobody there


USER_SETTINGS = """{
    "model": "sonnet",
    "permissions": {"allow": ["Bash(ls:*)"], "deny": []},
    "env": {"ANTHROPIC_BASE_URL": "https://proxy.example", "MY_VAR": "ünïcode ✓", "NUM": 3},
    "hooks": {}
}"""


def test_setup_merges_keeps_user_keys_and_remove_restores_bytes(paths: Paths) -> None:
    paths.settings.parent.mkdir()
    paths.settings.write_text(USER_SETTINGS)
    paths.claude_json.write_text('{"numStartups": 4, "mcpServers": {"other": {"command": "x"}}}')
    before = (paths.settings.read_bytes(), paths.claude_json.read_bytes())
    apply_setup(paths, env(), mcp_entry(URL, TOKEN))
    s = json.loads(paths.settings.read_text())
    assert s["model"] == "sonnet" and s["permissions"]["allow"] == ["Bash(ls:*)"] and s["hooks"] == {}
    assert s["env"]["MY_VAR"] == "ünïcode ✓" and s["env"]["NUM"] == 3
    assert s["env"]["ANTHROPIC_BASE_URL"] == URL and s["env"]["ANTHROPIC_AUTH_TOKEN"] == TOKEN
    cj = json.loads(paths.claude_json.read_text())
    assert cj["numStartups"] == 4 and cj["mcpServers"]["other"] == {"command": "x"}
    assert cj["mcpServers"]["turnout"] == {"type": "http", "url": URL + "/mcp",
                                           "headers": {"Authorization": f"Bearer {TOKEN}"}}
    # backups and state are private: they hold the user's previous values
    assert (paths.state_dir / "settings.json.orig").read_bytes() == before[0]
    assert os.stat(paths.state).st_mode & 0o777 == 0o600
    apply_remove(paths)
    assert (paths.settings.read_bytes(), paths.claude_json.read_bytes()) == before
    assert not paths.state_dir.exists()


def test_setup_is_idempotent_and_remembers_the_first_values(paths: Paths) -> None:
    paths.settings.parent.mkdir()
    paths.settings.write_text(USER_SETTINGS)
    before = paths.settings.read_bytes()
    assert apply_setup(paths, env(), None)
    once = paths.settings.read_bytes()
    assert apply_setup(paths, env(), None) == []  # nothing to change
    assert paths.settings.read_bytes() == once
    apply_remove(paths)
    assert paths.settings.read_bytes() == before  # the user's proxy URL, not turnout's


def test_remove_keeps_changes_the_user_made_after_setup(paths: Paths) -> None:
    paths.claude_json.write_text('{"numStartups": 1}')
    apply_setup(paths, env(), mcp_entry(URL, TOKEN))
    s = json.loads(paths.settings.read_text())
    s["env"]["ANTHROPIC_DEFAULT_HAIKU_MODEL"] = "my-choice"
    s["theme"] = "dark"
    paths.settings.write_text(json.dumps(s))
    cj = json.loads(paths.claude_json.read_text())
    cj["numStartups"] = 2  # Claude Code writes this file all the time
    paths.claude_json.write_text(json.dumps(cj))
    lines = apply_remove(paths)
    s = json.loads(paths.settings.read_text())
    assert s == {"env": {"ANTHROPIC_DEFAULT_HAIKU_MODEL": "my-choice"}, "theme": "dark"}
    assert any("ANTHROPIC_DEFAULT_HAIKU_MODEL" in x for x in lines)
    assert json.loads(paths.claude_json.read_text()) == {"numStartups": 2}


def test_files_that_did_not_exist_are_removed_again(paths: Paths) -> None:
    apply_setup(paths, env(), mcp_entry(URL, TOKEN))
    assert paths.settings.exists() and paths.claude_json.exists()
    apply_remove(paths)
    assert not paths.settings.exists() and not paths.claude_json.exists()
    assert not paths.settings.parent.exists()  # setup created ~/.claude: gone again


@pytest.mark.parametrize("text", ["", "   \n", "\ufeff{}", "{}"])
def test_empty_and_bom_files_are_objects(paths: Paths, text: str) -> None:
    paths.settings.parent.mkdir()
    paths.settings.write_text(text, encoding="utf-8")
    before = paths.settings.read_bytes()
    apply_setup(paths, env(), None)
    assert json.loads(paths.settings.read_text())["env"]["ANTHROPIC_BASE_URL"] == URL
    apply_remove(paths)
    assert paths.settings.read_bytes() == before


@pytest.mark.parametrize("text,msg", [("{not json", "not valid JSON"), ("[1, 2]", "JSON list"),
                                      ('{"env": "x"}', '"env" is a str'), ("null", "JSON NoneType")])
def test_bad_files_are_refused_untouched(paths: Paths, text: str, msg: str) -> None:
    paths.settings.parent.mkdir()
    paths.settings.write_text(text)
    with pytest.raises(SetupError, match=msg):
        apply_setup(paths, env(), None)
    assert paths.settings.read_text() == text
    assert not paths.state.exists()


def test_remove_without_setup_says_so(paths: Paths) -> None:
    with pytest.raises(SetupError, match="no turnout setup to remove"):
        apply_remove(paths)


def test_a_later_setup_with_fewer_keys_restores_the_dropped_ones(paths: Paths) -> None:
    paths.settings.parent.mkdir()
    paths.settings.write_text('{"env": {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "9999"}}')
    apply_setup(paths, env(), None)
    assert json.loads(paths.settings.read_text())["env"]["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "25000"
    e = {k: v for k, v in env().items() if not k.startswith("CLAUDE_CODE_")}
    apply_setup(paths, e, None)  # e.g. the main model's window is unknown now
    assert json.loads(paths.settings.read_text())["env"]["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "9999"
    apply_remove(paths)
    assert json.loads(paths.settings.read_text()) == {"env": {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "9999"}}


def test_claude_arguments_are_everything_after_turnouts_own_options() -> None:
    assert claude_argv(["claude", "-p", "say hello", "--model", "x"]) == ["-p", "say hello", "--model", "x"]
    assert claude_argv(["claude", "--url", "http://h:1", "--config=c.toml", "-p", "hi"]) == ["-p", "hi"]
    assert claude_argv(["claude", "--port", "9", "--", "--url", "theirs"]) == ["--url", "theirs"]
    assert claude_argv(["claude", "setup", "--opus", "o"]) == ["setup", "--opus", "o"]
    assert claude_argv(["claude"]) == []


# ------------------------------------------------- issue 14, item 4: file modes


@pytest.fixture
def open_home() -> Iterator[Path]:
    """A home directory other users may enter (0755, as many are), in /tmp."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir="/tmp"))
    os.chmod(home, 0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_setup_makes_world_readable_files_that_get_the_token_private_and_says_so(open_home: Path) -> None:
    paths = Paths(open_home / ".claude" / "settings.json", open_home / ".claude.json",
                  open_home / ".local" / "state" / "turnout" / "claude")
    paths.settings.parent.mkdir(mode=0o755)
    paths.settings.write_text('{"theme": "dark"}')
    paths.claude_json.write_text('{"numStartups": 1}')
    for p in (paths.settings, paths.claude_json):
        os.chmod(p, 0o644)
    notes: list[str] = []
    apply_setup(paths, env(), mcp_entry(URL, TOKEN), notes)
    assert TOKEN in paths.settings.read_text() and TOKEN in paths.claude_json.read_text()
    assert _mode(paths.settings) == 0o600 and _mode(paths.claude_json) == 0o600
    for backup in paths.state_dir.iterdir():
        assert _mode(backup) == 0o600, backup
    assert _mode(paths.state_dir) == 0o700 and _mode(paths.state_dir.parent) == 0o700
    assert notes == [f"{paths.settings} was mode 644 (readable by other users): now 600",
                     f"{paths.claude_json} was mode 644 (readable by other users): now 600"]
    if os.geteuid() == 0:  # another local user tries to read the token
        for p in (paths.settings, paths.claude_json):
            r = subprocess.run(other_user("cat", str(p)), capture_output=True, text=True)
            assert r.returncode != 0 and TOKEN not in r.stdout, p
    # a second run has nothing left to tighten
    again: list[str] = []
    assert apply_setup(paths, env(), mcp_entry(URL, TOKEN), again) == [] and again == []
    # remove puts the content back byte for byte and never loosens the mode again
    apply_remove(paths)
    assert json.loads(paths.settings.read_text()) == {"theme": "dark"}
    assert _mode(paths.settings) == 0o600 and _mode(paths.claude_json) == 0o600


def test_files_setup_creates_are_private(paths: Paths) -> None:
    old = os.umask(0o022)
    try:
        apply_setup(paths, env(), mcp_entry(URL, TOKEN))
    finally:
        os.umask(old)
    assert _mode(paths.settings) == 0o600 and _mode(paths.claude_json) == 0o600
    assert _mode(paths.settings.parent) == 0o700  # ~/.claude, made by setup


def test_cli_setup_tells_the_user_what_it_tightened(open_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from turnout.cli.claude import cmd_setup

    monkeypatch.setenv("HOME", str(open_home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(open_home / ".local" / "state"))
    monkeypatch.setenv("TURNOUT_TOKEN", TOKEN)
    (open_home / ".claude").mkdir()
    (open_home / ".claude" / "settings.json").write_text("{}")
    os.chmod(open_home / ".claude" / "settings.json", 0o644)
    args = argparse.Namespace(config=None, url=URL, port=None, opus=None, sonnet=None, haiku=None, custom=None,
                              no_mcp=True)
    assert cmd_setup(args) == 0
    out = capsys.readouterr().out
    assert f"{open_home / '.claude' / 'settings.json'} was mode 644 (readable by other users): now 600" in out
    assert TOKEN not in out
