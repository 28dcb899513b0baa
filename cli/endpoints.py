"""``turnout endpoints add|list|remove``: cloud and OpenAI-compatible endpoints in the
config file (gateway/endpoints.py)."""

from __future__ import annotations

import argparse

from turnout.cli.common import Lazy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("endpoints", help="cloud and OpenAI-compatible endpoints in the config file")
    p.add_argument("--config", help="config file (default: $TURNOUT_CONFIG or ~/.config/turnout/config.toml)")
    es = p.add_subparsers(dest="endpoints_command", required=True)
    a = es.add_parser("add", help="add an endpoint")
    a.add_argument("name")
    a.add_argument("--provider", required=True, help="anthropic | openai | gemini | openai_compatible")
    a.add_argument("--base-url", help="default: the provider's public API")
    a.add_argument("--key", help="keyring entry of its key (default: the endpoint's name)")
    a.add_argument("--model", action="append", help="NAME[:WINDOW[:IN:OUT]] (repeatable)")
    a.set_defaults(func=Lazy("turnout.gateway.endpoints", "cmd_add"))
    ls = es.add_parser("list", help="endpoints, models, windows, prices and whether a key is set")
    ls.set_defaults(func=Lazy("turnout.gateway.endpoints", "cmd_list"))
    r = es.add_parser("remove", help="remove an endpoint")
    r.add_argument("name")
    r.set_defaults(func=Lazy("turnout.gateway.endpoints", "cmd_remove"))
