"""Provider API keys in the OS keyring, and ``turnout keys set|list|delete``.

Each key is stored under the service ``turnout-provider`` with the key's name
(by default the endpoint's name: ``openai``, ``anthropic``, ``gemini``...) as the
user name; the names themselves are kept in one more entry, because keyring
cannot enumerate. Where no desktop keyring exists, :func:`gateway.auth.get_keyring`
falls back to a 0600 file. The gateway reads keys here and injects them into
upstream requests; a key is never printed (``list`` masks it), logged or returned.

``TURNOUT_KEY_<NAME>`` in the environment (upper case, ``-`` as ``_``) overrides
the keyring, for CI and containers.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time

from keyring.errors import KeyringError, PasswordDeleteError

from turnout.gateway.auth import _protect_file, get_keyring

SERVICE = "turnout-provider"
_INDEX = "__names__"


def _env_name(name: str) -> str:
    return "TURNOUT_KEY_" + name.upper().replace("-", "_").replace(".", "_")


def _names() -> list[str]:
    raw = get_keyring().get_password(SERVICE, _INDEX)
    try:
        val = json.loads(raw) if raw else []
    except ValueError:
        val = []
    return [str(v) for v in val] if isinstance(val, list) else []


def set_key(name: str, value: str) -> None:
    kr = get_keyring()
    kr.set_password(SERVICE, name, value)
    names = _names()
    if name not in names:
        kr.set_password(SERVICE, _INDEX, json.dumps(sorted([*names, name])))
    _protect_file(kr)


def get_key(name: str) -> str | None:
    env = os.environ.get(_env_name(name))
    if env:
        return env
    try:
        return get_keyring().get_password(SERVICE, name)
    except KeyringError:
        return None


def delete_key(name: str) -> bool:
    kr = get_keyring()
    try:
        kr.delete_password(SERVICE, name)
        found = True
    except PasswordDeleteError:
        found = False
    names = _names()
    if name in names:
        kr.set_password(SERVICE, _INDEX, json.dumps([n for n in names if n != name]))
        found = True
    return found


def mask(value: str) -> str:
    """Enough to tell keys apart, never enough to use one."""
    if len(value) < 16:
        return "*" * 8
    return f"{value[:3]}…{value[-4:]}"


class KeyCache:
    """The gateway's view of the keyring: read on first use and again after
    ``ttl_s``, so ``turnout keys set`` applies without a restart and a request
    does not touch the keyring file each time."""

    def __init__(self, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str | None]] = {}

    def get(self, name: str) -> str | None:
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        val = get_key(name)
        self._cache[name] = (now, val)
        return val

    def has(self, name: str) -> bool:
        return bool(self.get(name))


# ------------------------------------------------------------------------ CLI


def cmd_set(args: argparse.Namespace) -> int:
    name = args.name
    if sys.stdin.isatty():
        value = getpass.getpass(f"API key for {name} (not shown): ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        print("turnout: no key given; nothing stored", file=sys.stderr)
        return 2
    try:
        set_key(name, value)
    except KeyringError as e:
        print(f"turnout: cannot store the key in the keyring: {e}", file=sys.stderr)
        return 2
    print(f"stored the key for {name} ({mask(value)}) in the keyring, service {SERVICE!r}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    names = _names()
    if not names:
        print("no provider keys stored; add one with `turnout keys set NAME`")
        return 0
    for name in names:
        val = get_key(name)
        print(f"{name}\t{mask(val) if val else '(missing)'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if delete_key(args.name):
        print(f"deleted the key for {args.name}")
        return 0
    print(f"turnout: no key stored for {args.name}", file=sys.stderr)
    return 1
