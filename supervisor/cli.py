"""The ``turnout`` command line.

    turnout up [--config FILE] [--host H] [--port P] [--daemon]
                                          run (in the foreground, or detached)
    turnout down [--timeout S]            stop a running turnout gracefully
    turnout status | ps [--json]          workers, models, memory
    turnout scale MODEL_OR_BACKEND N      run N workers (scaling down drains)
    turnout load MODEL                    load a model now (also un-parks it)
    turnout evict MODEL                   drain and stop a model's workers
    turnout logs [-f] [-n N]              the daemon's log
    turnout token                         print the API token

Every command but ``up`` and ``token`` talks to the supervisor's control socket;
``--port`` (default: the config's, else 8765) or ``--runtime-dir`` picks the
instance, so several can run side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from protocol.config import ConfigError, load_config
from protocol.logs import setup_logging


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

    try:
        cfg = load_config(_config_path(args.config))
    except ConfigError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    from gateway.routing import validate

    problems = validate(cfg)  # caught here, not by a gateway that would crash-loop on them
    if problems:
        print("turnout: config: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.host:
        cfg.server.host = args.host
    if args.port is not None:
        cfg.server.port = args.port
    if getattr(args, "daemon", False):
        from supervisor.daemon import start_daemon

        return start_daemon(args, cfg.server.host, cfg.server.port)
    setup_logging("supervisor")
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
    from protocol.paths import UnsafePathError
    from supervisor.control import runtime_base_for, runtime_dir_for

    runtime = runtime_dir_for(cfg.server.port, args.runtime_dir)
    pidfile = Path(args.pidfile) if getattr(args, "pidfile", None) else None
    try:
        arbiter = Arbiter(cfg, runtime, pidfile=pidfile, runtime_base=runtime_base_for(args.runtime_dir))
    except (UnsafePathError, ValueError) as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    return arbiter.run()


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import load_or_create_token

    try:
        print(load_or_create_token())
    except RuntimeError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    return 0


CLI_PLUGINS = ("workers.models", "workers.formats.cli", "gateway.keys", "gateway.endpoints", "bench.cli",
               "gateway.mcp_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnout", description="One local base URL for Claude Code and every Anthropic/OpenAI client.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start turnout in the foreground (Ctrl-C stops it)")
    up.add_argument("--config", help="TOML config file (default: $TURNOUT_CONFIG or ~/.config/turnout/config.toml)")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default 8765)")
    up.add_argument("--runtime-dir", help=argparse.SUPPRESS)
    up.add_argument("--daemon", action="store_true",
                    help="detach; pidfile and log under $XDG_STATE_HOME/turnout/PORT/")
    up.add_argument("--pidfile", help=argparse.SUPPRESS)
    up.add_argument("--wait", dest="wait_s", type=float, default=120.0, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    from supervisor.daemon import register_control_cli

    register_control_cli(sub, _config_path)
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
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "claude_args"):  # `turnout claude ARGS`: everything after turnout's own options is claude's
        from gateway.claude_setup import claude_argv

        args.claude_args = claude_argv(argv)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
