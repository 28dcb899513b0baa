"""What every command group shares: the config file's place and the lazy handler."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any

IMPORT_FAILED = 1  # the exit code of a command whose implementation cannot be imported


class ImplementationMissing(Exception):
    """A command's implementation module did not import; the message names it."""


def config_path(arg: str | None) -> str | None:
    """The config file ``turnout up`` reads (:func:`protocol.config.config_path`,
    imported only when a command needs it)."""
    from turnout.protocol.config import config_path as find

    return find(arg)


def load(module: str, command: str) -> ModuleType:
    """Import a command's implementation; any failure becomes one clear error naming
    the module (never a traceback, never a silently missing command)."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, and whatever a broken library raises on import
        raise ImplementationMissing(f"turnout {command}: cannot import {module} "
                                    f"({type(e).__name__}: {e})") from e


class Lazy:
    """A handler that imports ``module`` when the command runs and calls ``func(args)``."""

    def __init__(self, module: str, func: str) -> None:
        self.module, self.func = module, func

    def __call__(self, args: argparse.Namespace) -> int:
        impl: Any = getattr(load(self.module, args.command), self.func)
        return int(impl(args) or 0)

    def __repr__(self) -> str:
        return f"Lazy({self.module}.{self.func})"
