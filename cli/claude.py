"""``turnout claude setup | remove | [CLAUDE ARGS...]``: Claude Code pointed at turnout.
The settings it writes and undoes are gateway/claude_setup.py's, imported when the
command runs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from types import ModuleType
from typing import Any

from turnout.cli.common import load


def cmd_claude(args: argparse.Namespace) -> int:
    # Everything after turnout's own options is claude's (argparse's REMAINDER does
    # not take a first argument that looks like an option: `turnout claude -p hi`).
    load("turnout.gateway.claude_setup", "claude")  # fails loudly, naming it, before anything runs
    args.claude_args = claude_argv(args.argv)
    return _dispatch(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("claude", help="Claude Code: `setup` (settings + MCP), `remove`, or run claude via turnout",
                       description="turnout claude setup | remove | [CLAUDE ARGS...]")
    p.add_argument("--config", help="turnout config file")
    p.add_argument("--port", type=int, help="turnout's port (default: the config's, else 8765)")
    p.add_argument("--url", help="turnout's base URL (default: http://HOST:PORT from the config)")
    p.add_argument("claude_args", nargs=argparse.REMAINDER, help="setup | remove | arguments for claude")
    p.set_defaults(func=cmd_claude, wants_argv=True)


def _context(cs: ModuleType, args: argparse.Namespace) -> tuple[str, str, Any]:
    from turnout.gateway.auth import load_or_create_token
    from turnout.protocol.config import config_path, gateway_url, load_config

    cfg = load_config(config_path(args.config))
    url = (args.url or gateway_url(args.port, args.config)).rstrip("/")
    return url, load_or_create_token(), cfg


def cmd_setup(args: argparse.Namespace) -> int:
    cs = load("turnout.gateway.claude_setup", "claude")
    try:
        url, token, cfg = _context(cs, args)
        picks = cs.pick_models(cs.model_options(cfg, cs.local_windows(cfg, url, token)), cfg, opus=args.opus or "",
                            sonnet=args.sonnet or "", haiku=args.haiku or "", custom=args.custom or "")
        paths = cs.Paths.for_home()
        notes: list[str] = []
        changed = cs.apply_setup(paths, cs.settings_env(url, token, picks), None if args.no_mcp else cs.mcp_entry(url, token),
                              notes)
    except (cs.SetupError, RuntimeError, OSError) as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # ConfigError and friends: say what, not a traceback
        print(f"turnout: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"Claude Code now talks to turnout at {url} (token written to {paths.settings}; not shown)")
    for fam in ("SONNET", "OPUS", "HAIKU", "CUSTOM"):
        print(f"  /model {fam.lower() if fam != 'CUSTOM' else picks[fam].name:<10} -> {picks[fam].name}"
              f"  ({picks[fam].description})")
    if not args.no_mcp:
        print(f"  MCP server '{cs.MCP_NAME}' registered for all projects: {url}/mcp")
    for note in notes:  # the token must not sit in a file other users can read
        print(note)
    print("nothing changed (already set up)" if not changed else f"{len(changed)} setting(s) written; "
          "`turnout claude remove` undoes it")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    cs = load("turnout.gateway.claude_setup", "claude")
    try:
        for line in cs.apply_remove(cs.Paths.for_home()):
            print(line)
    except (cs.SetupError, OSError) as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 1
    return 0


def claude_binary() -> str | None:
    return os.environ.get("TURNOUT_CLAUDE_BIN") or shutil.which("claude")


def cmd_run(args: argparse.Namespace, rest: list[str]) -> int:
    """``claude`` with turnout's environment; no file is read or written but the
    turnout config. The MCP server comes in on the command line as stdio
    (``turnout mcp``), so the token never appears in the process list."""
    cs = load("turnout.gateway.claude_setup", "claude")
    exe = claude_binary()
    if exe is None:
        print("turnout: the `claude` command is not on PATH; install it with "
              "`npm install -g @anthropic-ai/claude-code`", file=sys.stderr)
        return 127
    try:
        url, token, cfg = _context(cs, args)
        picks = cs.pick_models(cs.model_options(cfg, cs.local_windows(cfg, url, token)), cfg)
    except Exception as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.update(cs.settings_env(url, token, picks))
    env["TURNOUT_TOKEN"] = token  # for the `turnout mcp` child; never on a command line
    env["TURNOUT_URL"] = url
    argv = [exe]
    servers: dict[str, Any] = {}
    try:
        cj, _ = cs.read_json_object(cs.Paths.for_home().claude_json)
        servers = cj.get("mcpServers", {}) if isinstance(cj.get("mcpServers"), dict) else {}
    except cs.SetupError:
        pass
    if cs.MCP_NAME not in servers:
        cfg_json = {"mcpServers": {cs.MCP_NAME: {"type": "stdio", "command": sys.executable,
                                              "args": ["-m", "turnout.cli", "mcp"]}}}
        argv += ["--mcp-config", json.dumps(cfg_json)]
    argv += rest
    os.execvpe(exe, argv, env)
    return 0  # not reached


_OWN_OPTIONS = ("--config", "--port", "--url")  # `turnout claude`'s own, before claude's arguments


def claude_argv(argv: list[str]) -> list[str]:
    """What follows ``claude`` in a turnout command line, less turnout's own options
    (argparse's REMAINDER does not take a first argument that looks like an option,
    so ``turnout claude -p "say hello"`` needs this)."""
    i = argv.index("claude") + 1
    while i < len(argv):
        a = argv[i]
        if a in _OWN_OPTIONS:
            i += 2
        elif a.split("=", 1)[0] in _OWN_OPTIONS:
            i += 1
        elif a == "--":
            return argv[i + 1:]
        else:
            break
    return argv[i:]


def _dispatch(args: argparse.Namespace) -> int:
    rest = list(args.claude_args)
    if rest and rest[0] in ("setup", "remove"):
        p = argparse.ArgumentParser(prog=f"turnout claude {rest[0]}")
        if rest[0] == "setup":
            p.add_argument("--opus", help="routable name for /model opus (default: the biggest-window cloud model)")
            p.add_argument("--sonnet", help="the main model (default: [routing] default, else the first local model)")
            p.add_argument("--haiku", help="background work (default: a local model)")
            p.add_argument("--custom", help="one more /model picker entry (default: a local model)")
            p.add_argument("--no-mcp", action="store_true", help="do not register the MCP server")
        sub = p.parse_args(rest[1:])
        for k, v in vars(sub).items():
            setattr(args, k, v)
        return cmd_setup(args) if rest[0] == "setup" else cmd_remove(args)
    return cmd_run(args, rest)
