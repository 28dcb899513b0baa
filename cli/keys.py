"""``turnout keys set|list|delete``: provider API keys in the OS keyring (gateway/keys.py)."""

from __future__ import annotations

import argparse

from turnout.cli.common import Lazy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="provider API keys in the OS keyring")
    ks = p.add_subparsers(dest="keys_command", required=True)
    s = ks.add_parser("set", help="store a key (asked without echo, or read from stdin)")
    s.add_argument("name", help="the endpoint or key name: anthropic, openai, gemini, ...")
    s.set_defaults(func=Lazy("turnout.gateway.keys", "cmd_set"))
    ls = ks.add_parser("list", help="the stored keys, masked")
    ls.set_defaults(func=Lazy("turnout.gateway.keys", "cmd_list"))
    d = ks.add_parser("delete", help="remove a key")
    d.add_argument("name")
    d.set_defaults(func=Lazy("turnout.gateway.keys", "cmd_delete"))
