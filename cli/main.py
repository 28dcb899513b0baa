"""The ``turnout`` entry point: builds the parser from every command group (cheap:
argparse only) and runs the chosen command, whose implementation is imported then."""

from __future__ import annotations

import argparse
import sys

from turnout.cli import bench, claude, daemon, endpoints, formats, keys, mcp, models
from turnout.cli.common import IMPORT_FAILED, ImplementationMissing

# In `turnout --help` order.
GROUPS = (daemon, models, formats, keys, endpoints, bench, mcp, claude)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnout", description="One local base URL for Claude Code and every Anthropic/OpenAI client.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "wants_argv", False):  # `turnout claude ARGS`: the command reads the rest itself
        args.argv = argv
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except ImplementationMissing as e:
        print(e, file=sys.stderr)
        return IMPORT_FAILED
