"""``turnout models list|add PATH|pull hf://...|remove NAME`` (workers/models.py)."""

from __future__ import annotations

import argparse

from turnout.cli.common import Lazy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list, add, pull and remove local models")
    ms = p.add_subparsers(dest="models_cmd", required=True)
    ls = ms.add_parser("list", help="list local models")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    add = ms.add_parser("add", help="register a local GGUF file")
    add.add_argument("path")
    add.add_argument("--name")
    pl = ms.add_parser("pull", help="download hf://org/repo/file.gguf[@revision]")
    pl.add_argument("url")
    pl.add_argument("--name")
    rm = ms.add_parser("remove", help="forget a model (deletes files turnout downloaded)")
    rm.add_argument("name")
    p.set_defaults(func=Lazy("turnout.workers.models", "run_cli"))
