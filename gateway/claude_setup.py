"""Claude Code, configured for turnout in one command.

    turnout claude setup [--sonnet NAME] [--opus NAME] [--haiku NAME] [--custom NAME]
    turnout claude remove
    turnout claude [CLAUDE ARGS...]      run claude against turnout, touching no file

``setup`` writes, into ``~/.claude/settings.json`` ``"env"``: ``ANTHROPIC_BASE_URL``,
``ANTHROPIC_AUTH_TOKEN``, ``ANTHROPIC_DEFAULT_{OPUS,SONNET,HAIKU}_MODEL`` and
``ANTHROPIC_CUSTOM_MODEL_OPTION`` (each with ``_NAME`` and ``_DESCRIPTION``, so the
``/model`` picker lists turnout's endpoints), and the compaction window and output
limit fitted to the main model's context window; it registers turnout's MCP server
for the user scope (``mcpServers.turnout`` in ``~/.claude.json``, what
``claude mcp add -s user --transport http`` writes). Idempotent; the user's other
settings stay as they are.

Before its first change it keeps, under ``$XDG_STATE_HOME/turnout/claude/`` (0600:
settings may hold secrets), a copy of each file and the previous value of every
key it sets. ``remove`` puts back each key turnout set and still holds turnout's
value (a key the user changed since is left alone); when nothing else changed,
the original file comes back byte for byte, and a file setup created is deleted.

The API token is written where Claude Code expects it (the user's own settings)
and is never printed or logged. Both files that get it (settings.json and
~/.claude.json) are written 0600, whatever mode they had: one that was readable
by other users is tightened, and the user is told (issue 14). ``~/.claude``, when
setup creates it, and the backup directory are 0700, the backups 0600. ``remove``
puts the content back and leaves the mode at 0600: never loosened again (the file
may hold other secrets of the user's).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.protocol.config import NON_CHAT_BACKENDS
from turnout.protocol.paths import ensure_private_dir, open_private

MCP_NAME = "turnout"
FAMILIES = ("OPUS", "SONNET", "HAIKU")
_MISSING = {"__turnout_missing__": True}  # a key that was absent (JSON-safe marker)
PRIVATE = 0o600  # every file turnout writes here may hold the token or the user's secrets


class SetupError(Exception):
    """Something the user must fix first; the message says what."""


# ----------------------------------------------------------------- JSON files


def read_json_object(path: Path) -> tuple[dict[str, Any], bool]:
    """(the object in ``path``, whether the file exists). An absent, empty or
    whitespace-only file is ``{}``; anything that is not a JSON object is refused
    rather than overwritten."""
    if not path.exists():
        return {}, False
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="strict") if raw else ""
    if not text.strip():
        return {}, True
    try:
        val = json.loads(text)
    except ValueError as e:
        raise SetupError(f"{path} is not valid JSON ({e}); fix or move it, then run this again") from None
    if not isinstance(val, dict):
        raise SetupError(f"{path} holds a JSON {type(val).__name__}, not an object; fix or move it first")
    return val, True


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = PRIVATE) -> None:
    """Write ``data`` as Claude Code does (2-space indent, UTF-8), atomically: a
    reader never sees half a file, and a running Claude Code never sees none.
    The file is ``mode`` (0600) from its first byte: made by mkstemp (0600)."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_bytes_atomic(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    if not path.parent.exists():
        _mkdir_private(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with_suppress_unlink(tmp)
        raise


def _mkdir_private(d: Path) -> None:
    """A directory setup makes (``~/.claude``, and any missing parent): 0700."""
    for p in reversed([d, *d.parents]):
        if not p.exists():
            p.mkdir(mode=0o700)
            os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask


def tighten(path: Path, notes: list[str] | None) -> None:
    """A file that holds (or will hold) the token, made 0600 if it was looser,
    with a note for the user."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, PRIVATE)
        if notes is not None:
            who = "readable by other users" if mode & 0o044 else "open to other users"
            notes.append(f"{path} was mode {mode:o} ({who}): now 600")


def with_suppress_unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


# --------------------------------------------------------------- the values


@dataclass(frozen=True)
class ModelOption:
    """A routable name and what the picker shows for it."""

    name: str
    description: str
    window: int = 0


def model_options(cfg: Any, windows: dict[str, int] | None = None) -> list[ModelOption]:
    """Every name turnout routes, from the config: local chat models, cloud
    endpoint/model names, exact routing aliases. ``windows``: local models' context
    windows the config does not give (:func:`local_windows`)."""
    from turnout.gateway.recommend import fmt_tokens

    out: list[ModelOption] = []
    for mc in cfg.models:
        if mc.backend in NON_CHAT_BACKENDS:
            continue
        win = mc.context_window or int(mc.options.get("context_window", 0) or 0) or (windows or {}).get(mc.name, 0)
        w = f", {fmt_tokens(win)} window" if win else ""
        out.append(ModelOption(mc.name, f"turnout: local {mc.backend}{w}", win))
    for ep in cfg.endpoints:
        for em in ep.models:
            w = f", {fmt_tokens(em.context_window)} window" if em.context_window else ""
            p = f", ${em.input_price:g}/${em.output_price:g} per Mtok" if em.input_price or em.output_price else ""
            out.append(ModelOption(f"{ep.name}/{em.name}", f"turnout: {ep.provider}{w}{p}", em.context_window))
    seen = {o.name for o in out}
    for alias, target in cfg.routing.aliases.items():
        if alias not in seen and not any(c in alias for c in "*?[") and alias.lower() not in ("opus", "sonnet", "haiku"):
            first = target if isinstance(target, str) else (target[0] if target else "")
            win = next((o.window for o in out if o.name == first), 0)
            out.append(ModelOption(alias, f"turnout: alias of {first}", win))
    return out


def served_windows(url: str, token: str, timeout: float = 3.0) -> dict[str, int]:
    """Context windows from the running gateway's ``/v1/models`` (what its workers
    loaded); {} when it does not answer."""
    import urllib.error
    import urllib.request

    rq = urllib.request.Request(url.rstrip("/") + "/v1/models", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(rq, timeout=timeout) as r:
            data = json.loads(r.read()).get("data", [])
    except (OSError, ValueError, urllib.error.URLError):
        return {}
    return {d["id"]: int(d["context_window"]) for d in data
            if isinstance(d, dict) and isinstance(d.get("id"), str) and isinstance(d.get("context_window"), int)}


def local_windows(cfg: Any, url: str = "", token: str = "") -> dict[str, int]:
    """The context window of each local chat model the config gives none for: read
    from its GGUF header and capped as its llama_cpp worker will cap it (the bundled
    model's, 32K, even before it is assembled); else what the running gateway at
    ``url`` reports (other backends, or a model file not found here)."""
    out: dict[str, int] = {}
    missing = []
    for mc in cfg.models:
        if mc.backend in NON_CHAT_BACKENDS or mc.context_window:
            continue
        win = 0
        if mc.backend == "llama_cpp":
            from turnout.protocol.modelfiles import context_window_of  # late: reads a GGUF header

            win = context_window_of(mc.path, mc.options)
        if win:
            out[mc.name] = win
        else:
            missing.append(mc.name)
    if missing and url:
        served = served_windows(url, token)
        out.update({n: served[n] for n in missing if served.get(n)})
    return out


def pick_models(options: list[ModelOption], cfg: Any, *, opus: str = "", sonnet: str = "", haiku: str = "",
                custom: str = "") -> dict[str, ModelOption]:
    """The picker's four entries. Main (sonnet): the routing default, else the
    first local model. Opus: the cloud model with the biggest window. Haiku
    (background work): a local model. Custom: a local model not already shown."""
    if not options:
        raise SetupError("turnout's configuration serves no chat model; add [[models]] or [[endpoints]] first")
    by_name = {o.name: o for o in options}

    def get(name: str, role: str) -> ModelOption:
        if name in by_name:
            return by_name[name]
        from turnout.gateway.planning import resolve_target

        if resolve_target(cfg, name, 1):
            return ModelOption(name, "turnout", 0)
        raise SetupError(f"--{role} {name!r}: turnout does not route that name; choose one of "
                         f"{', '.join(by_name)}")

    local = [o for o in options if o.description.startswith("turnout: local")]
    cloud = [o for o in options if "/" in o.name]
    default = cfg.routing.default if isinstance(cfg.routing.default, str) else (cfg.routing.default or [""])[0]
    main = get(sonnet, "sonnet") if sonnet else (by_name.get(default) or (local or options)[0])
    big = get(opus, "opus") if opus else (max(cloud, key=lambda o: o.window) if cloud else main)
    small = get(haiku, "haiku") if haiku else (local[0] if local else main)
    if custom:
        extra = get(custom, "custom")
    else:
        shown = {main.name, big.name, small.name}
        extra = next((o for o in local + options if o.name not in shown), local[0] if local else main)
    return {"SONNET": main, "OPUS": big, "HAIKU": small, "CUSTOM": extra}


def fitted_limits(window: int) -> dict[str, str]:
    """Compaction window and answer limit for a model with ``window`` tokens of
    context: compact at the window (Claude Code keeps its own margin inside it) and
    cap answers at an eighth of it (4K for a 32K local model), 32K at most.
    (Claude Code 2.1.197 raises an auto-compact window under 100K to 100K, so for a
    32K model it does not compact early; a conversation that outgrows the window
    gets ``prompt is too long``, on which Claude Code compacts by itself.)"""
    if not window:
        return {}
    return {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": str(window),
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(max(1024, min(32_000, window // 8)))}


def settings_env(url: str, token: str, picks: dict[str, ModelOption]) -> dict[str, str]:
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": token}
    for fam in FAMILIES:
        o = picks[fam]
        env[f"ANTHROPIC_DEFAULT_{fam}_MODEL"] = o.name
        env[f"ANTHROPIC_DEFAULT_{fam}_MODEL_NAME"] = o.name
        env[f"ANTHROPIC_DEFAULT_{fam}_MODEL_DESCRIPTION"] = o.description
    c = picks["CUSTOM"]
    env["ANTHROPIC_CUSTOM_MODEL_OPTION"] = c.name
    env["ANTHROPIC_CUSTOM_MODEL_OPTION_NAME"] = c.name
    env["ANTHROPIC_CUSTOM_MODEL_OPTION_DESCRIPTION"] = c.description
    env.update(fitted_limits(picks["SONNET"].window))
    return env


def mcp_entry(url: str, token: str) -> dict[str, Any]:
    return {"type": "http", "url": url.rstrip("/") + "/mcp", "headers": {"Authorization": f"Bearer {token}"}}


# ------------------------------------------------------------- merge/restore


@dataclass
class Paths:
    settings: Path
    claude_json: Path
    state_dir: Path

    @classmethod
    def for_home(cls, home: Path | None = None) -> Paths:
        home = home or Path(os.path.expanduser("~"))
        cfg_dir = Path(os.environ["CLAUDE_CONFIG_DIR"]) if os.environ.get("CLAUDE_CONFIG_DIR") else home / ".claude"
        xdg = os.environ.get("XDG_STATE_HOME") or str(home / ".local" / "state")
        return cls(cfg_dir / "settings.json", home / ".claude.json", Path(xdg) / "turnout" / "claude")

    @property
    def state(self) -> Path:
        return self.state_dir / "state.json"


def _backup(src: Path, dst: Path) -> None:
    """A copy of the user's file, 0600 from its first byte (it may hold secrets)."""
    ensure_private_dir(dst.parent)
    fd = open_private(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())


def apply_setup(paths: Paths, env: dict[str, str], mcp: dict[str, Any] | None,
                notes: list[str] | None = None) -> list[str]:
    """Merge ``env`` into settings.json and ``mcp`` into ~/.claude.json, recording
    what was there first. Returns what changed, one line each (no values).
    ``notes`` gets a line for each file that was readable by other users and is
    0600 now (both files get the token)."""
    settings, s_exists = read_json_object(paths.settings)
    cj, c_exists = read_json_object(paths.claude_json) if mcp is not None else ({}, False)
    cur_env = settings.get("env", {})
    if not isinstance(cur_env, dict):
        raise SetupError(f"{paths.settings}: \"env\" is a {type(cur_env).__name__}, not an object; fix it first")
    servers = cj.get("mcpServers", {})
    if not isinstance(servers, dict):
        raise SetupError(f"{paths.claude_json}: \"mcpServers\" is not an object; fix it first")
    state, _ = read_json_object(paths.state)
    first = not state
    if first:
        state = {"version": 1, "settings": {"existed": s_exists, "had_env": "env" in settings, "previous": {}},
                 "claude_json": {"existed": c_exists, "had_servers": "mcpServers" in cj, "previous": {}},
                 "created_dir": not paths.settings.parent.exists()}
        ensure_private_dir(paths.state_dir)
        if s_exists:
            _backup(paths.settings, paths.state_dir / "settings.json.orig")
        if c_exists and mcp is not None:
            _backup(paths.claude_json, paths.state_dir / "claude.json.orig")
    prev = state["settings"]["previous"]
    written = state["settings"].setdefault("written", {})
    changed = []
    for k, v in env.items():
        if k not in prev:  # a re-run keeps the first recorded value: the user's own
            prev[k] = cur_env.get(k, _MISSING)
        if cur_env.get(k) != v:
            changed.append(f"settings env {k}")
        written[k] = v
    # Keys an earlier setup wrote that this one no longer sets go back now.
    for k in [k for k in written if k not in env]:
        if cur_env.get(k) == written.pop(k):
            old = prev.pop(k, _MISSING)
            if old == _MISSING:
                cur_env.pop(k, None)
            else:
                cur_env[k] = old
            changed.append(f"settings env {k} (restored)")
    cur_env.update(env)
    settings["env"] = cur_env
    # Write the state first: a crash between the two writes must not lose the
    # user's previous values.
    write_json_atomic(paths.state, state, PRIVATE)
    tighten(paths.settings, notes)
    if changed or not s_exists:
        write_json_atomic(paths.settings, settings)
    if mcp is not None:
        tighten(paths.claude_json, notes)
        cjs = state["claude_json"]
        if "previous" not in cjs or MCP_NAME not in cjs["previous"]:
            cjs.setdefault("previous", {})[MCP_NAME] = servers.get(MCP_NAME, _MISSING)
        cjs["written"] = mcp
        if servers.get(MCP_NAME) != mcp:
            servers[MCP_NAME] = mcp
            cj["mcpServers"] = servers
            write_json_atomic(paths.state, state, PRIVATE)
            write_json_atomic(paths.claude_json, cj)
            changed.append(f"{paths.claude_json.name} mcpServers.{MCP_NAME}")
        else:
            write_json_atomic(paths.state, state, PRIVATE)
    return changed


def _restore_file(path: Path, data: dict[str, Any], existed: bool, orig: Path, drop_if_empty: bool) -> str:
    """Write ``data`` back to ``path``: the original bytes when the content is the
    original's, nothing at all when the file did not exist and nothing is left."""
    if orig.exists():
        original, _ = read_json_object(orig)
        if original == data:
            write_bytes_atomic(path, orig.read_bytes())
            return "restored byte for byte"
    if not existed and drop_if_empty and not data:
        if path.exists():
            path.unlink()
        return "removed (setup had created it)"
    write_json_atomic(path, data)
    return "restored turnout's keys (the file has other changes made since setup, kept)"


def apply_remove(paths: Paths) -> list[str]:
    """Undo :func:`apply_setup`; see the module docstring. Returns what was done."""
    state, has = read_json_object(paths.state)
    if not has or not state:
        raise SetupError("no turnout setup to remove (nothing recorded); `turnout claude setup` first")
    out = []
    ss = state["settings"]
    settings, _ = read_json_object(paths.settings)
    env = settings.get("env", {})
    kept = []
    if isinstance(env, dict):
        for k, old in ss["previous"].items():
            if k in env and env[k] != ss.get("written", {}).get(k, env[k]):
                kept.append(k)  # the user changed it since: theirs now
                continue
            if old == _MISSING:
                env.pop(k, None)
            else:
                env[k] = old
        if not env and not ss["had_env"]:
            settings.pop("env", None)
        else:
            settings["env"] = env
    if paths.settings.exists() or ss["existed"]:
        how = _restore_file(paths.settings, settings, ss["existed"], paths.state_dir / "settings.json.orig", True)
        out.append(f"{paths.settings}: {how}")
    if kept:
        out.append(f"kept keys you changed since setup: {', '.join(kept)}")
    if state.get("created_dir") and paths.settings.parent.exists() and not any(paths.settings.parent.iterdir()):
        paths.settings.parent.rmdir()
    cjs = state.get("claude_json", {})
    if MCP_NAME in cjs.get("previous", {}):
        cj, _ = read_json_object(paths.claude_json)
        servers = cj.get("mcpServers", {})
        if isinstance(servers, dict) and servers.get(MCP_NAME, cjs.get("written")) == cjs.get("written"):
            old = cjs["previous"][MCP_NAME]
            if old == _MISSING:
                servers.pop(MCP_NAME, None)
            else:
                servers[MCP_NAME] = old
            if not servers and not cjs.get("had_servers"):
                cj.pop("mcpServers", None)
            else:
                cj["mcpServers"] = servers
            how = _restore_file(paths.claude_json, cj, cjs.get("existed", False),
                                paths.state_dir / "claude.json.orig", True)
            out.append(f"{paths.claude_json}: {how}")
        else:
            out.append(f"{paths.claude_json}: mcpServers.{MCP_NAME} was changed since setup: kept")
    shutil.rmtree(paths.state_dir, ignore_errors=True)
    return out
