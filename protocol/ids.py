"""Identifiers for requests, messages and tool calls.

They name things; they guard nothing (the API token does), so they come from a
seeded PRNG, not ``secrets``: one ``getrandom`` syscall per id adds up on the hot
path of every request. Reseeded after a fork so no two processes share a stream.
"""

from __future__ import annotations

import os
import random

_rng = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(16)))


def hex_id(prefix: str, nbytes: int = 12) -> str:
    """``prefix`` + ``2 * nbytes`` lowercase hex digits."""
    return f"{prefix}{_rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"
