"""Running turnout: ``up``, ``down``, ``status``/``ps``, ``scale``, ``load``,
``evict``, ``logs`` and ``token``.

    turnout up [--config FILE] [--host H] [--port P] [--daemon]
                                          run (in the foreground, or detached)
    turnout down [--timeout S]            stop a running turnout gracefully
    turnout status | ps [--json]          workers, models, memory
    turnout scale MODEL_OR_BACKEND N      run N workers (scaling down drains)
    turnout load MODEL                    load a model now (also un-parks it)
    turnout evict MODEL                   drain and stop a model's workers
    turnout logs [-f] [-n N]              the daemon's log
    turnout token                         print the API token

Every command but ``up`` and ``token`` talks to the supervisor's control socket
(supervisor/daemon.py); ``--port`` (default: the config's, else 8765) or
``--runtime-dir`` picks the instance, so several can run side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from turnout.cli.common import Lazy, config_path, load


def cmd_up(args: argparse.Namespace) -> int:
    config = load("turnout.protocol.config", "up")
    try:
        cfg = config.load_config(config_path(args.config))
    except config.ConfigError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    problems = load("turnout.gateway.routing", "up").validate(cfg)  # here, not in a gateway that would crash-loop
    if problems:
        print("turnout: config: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.host:
        cfg.server.host = args.host
    if args.port is not None:
        cfg.server.port = args.port
    if getattr(args, "daemon", False):
        return int(load("turnout.supervisor.daemon", "up").start_daemon(args, cfg.server.host, cfg.server.port))
    from turnout.protocol.logs import setup_logging

    setup_logging("supervisor")
    if any(mc.backend == "llama_cpp" and not mc.path for mc in cfg.models):
        # Assemble the bundled default model here, so its progress bar shows in the
        # user's terminal before any worker starts (the worker would do it otherwise).
        load("turnout.workers.models", "up").ensure_default_model()
    auth = load("turnout.gateway.auth", "up")
    try:
        auth.load_or_create_token()  # once, before the gateway starts: no race to create it
    except RuntimeError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    arbiter = load("turnout.supervisor.arbiter", "up")
    from turnout.protocol.paths import UnsafePathError
    from turnout.supervisor.control import runtime_base_for, runtime_dir_for

    runtime = runtime_dir_for(cfg.server.port, args.runtime_dir)
    pidfile = Path(args.pidfile) if getattr(args, "pidfile", None) else None
    try:
        arb = arbiter.Arbiter(cfg, runtime, pidfile=pidfile, runtime_base=runtime_base_for(args.runtime_dir))
    except (UnsafePathError, ValueError) as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    return int(arb.run())


def cmd_token(args: argparse.Namespace) -> int:
    auth = load("turnout.gateway.auth", "token")
    try:
        print(auth.load_or_create_token())
    except RuntimeError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    return 0


def _instance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="the instance's port (default: the config's, else 8765)")
    p.add_argument("--runtime-dir", help="the instance's runtime directory (overrides --port)")
    p.add_argument("--config", help="config file (for its port)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=5.0, help=argparse.SUPPRESS)
    p.set_defaults(config_path=config_path)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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

    down = sub.add_parser("down", help="stop a running turnout (graceful, timed)")
    _instance_options(down)
    down.add_argument("--wait", dest="wait_s", type=float, default=30.0,
                      help="seconds to wait for a graceful stop before killing (default 30)")
    down.set_defaults(func=Lazy("turnout.supervisor.daemon", "cmd_down"))
    for name in ("status", "ps"):
        p = sub.add_parser(name, help="workers, models and memory of a running turnout")
        _instance_options(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=Lazy("turnout.supervisor.daemon", "cmd_status"))
    sc = sub.add_parser("scale", help="run N workers of a model (or of each model of a backend)")
    _instance_options(sc)
    sc.add_argument("target", metavar="MODEL_OR_BACKEND")
    sc.add_argument("workers", type=int, metavar="N")
    sc.set_defaults(func=Lazy("turnout.supervisor.daemon", "cmd_scale"))
    ld = sub.add_parser("load", help="load a model now (also un-parks a failed one)")
    _instance_options(ld)
    ld.add_argument("model")
    ld.add_argument("--no-wait", action="store_true", help="return without waiting for it to be ready")
    ld.add_argument("--wait", dest="wait_s", type=float, default=120.0, help=argparse.SUPPRESS)
    ld.set_defaults(func=Lazy("turnout.supervisor.daemon", "cmd_load"))
    ev = sub.add_parser("evict", help="drain and stop every worker of a model")
    _instance_options(ev)
    ev.add_argument("model")
    ev.set_defaults(func=Lazy("turnout.supervisor.daemon", "cmd_evict"))
    lg = sub.add_parser("logs", help="print the daemon's log")
    _instance_options(lg)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("-n", "--lines", type=int, default=100, help="last N lines (0: all; default 100)")
    lg.set_defaults(func=Lazy("turnout.supervisor.daemon", "cmd_logs"))

    tok = sub.add_parser("token", help="print the API token (created on first use)")
    tok.set_defaults(func=cmd_token)
