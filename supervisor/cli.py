"""The ``turnout`` command line.

    turnout up [--config FILE] [--host H] [--port P]   run in the foreground
    turnout token                                      print the API token
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from protocol.config import ConfigError, load_config
from protocol.logs import setup_logging
from protocol.sockets import default_runtime_dir


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    env = os.environ.get("TURNOUT_CONFIG")
    if env:
        return env
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    p = Path(xdg) / "turnout" / "config.toml"
    return str(p) if p.exists() else None


def cmd_up(args: argparse.Namespace) -> int:
    from gateway.auth import load_or_create_token
    from supervisor.arbiter import Arbiter

    setup_logging("supervisor")
    try:
        cfg = load_config(_config_path(args.config))
    except ConfigError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    if args.host:
        cfg.server.host = args.host
    if args.port is not None:
        cfg.server.port = args.port
    if any(mc.backend == "llama_cpp" and not mc.path for mc in cfg.models):
        # Assemble the bundled default model here, so its progress bar shows in the
        # user's terminal before any worker starts (the worker would do it otherwise).
        from workers.models import ensure_default_model

        ensure_default_model()
    try:
        load_or_create_token()  # once, before the gateway starts: no race to create it
    except RuntimeError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    runtime = Path(args.runtime_dir) if args.runtime_dir else default_runtime_dir() / str(cfg.server.port)
    return Arbiter(cfg, runtime).run()


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import load_or_create_token

    try:
        print(load_or_create_token())
    except RuntimeError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    return 0


CLI_PLUGINS = ("workers.models", "gateway.keys", "gateway.endpoints", "bench.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnout", description="One local base URL for Claude Code and every Anthropic/OpenAI client.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start turnout in the foreground (Ctrl-C stops it)")
    up.add_argument("--config", help="TOML config file (default: $TURNOUT_CONFIG or ~/.config/turnout/config.toml)")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default 8765)")
    up.add_argument("--runtime-dir", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    tok = sub.add_parser("token", help="print the API token (created on first use)")
    tok.set_defaults(func=cmd_token)
    # Subcommands owned by other packages register themselves here.
    import importlib

    for mod in CLI_PLUGINS:
        try:
            plugin = importlib.import_module(mod)
        except ImportError:
            continue
        plugin.register_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
