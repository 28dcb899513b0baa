"""The API token: from ``TURNOUT_TOKEN``, else kept in the OS keyring.

On first start turnout generates a token and stores it with ``keyring`` (macOS
Keychain, Windows Credential Locker, Secret Service on a Linux desktop). Where no
desktop keyring exists, keyring falls back to keyrings.alt's plaintext file backend,
whose file turnout keeps at mode 0600. The token is never logged.
"""

from __future__ import annotations

import os
import secrets

import keyring
import keyring.backend
from keyring.errors import KeyringError

SERVICE = "turnout"
TOKEN_USER = "api-token"
TOKEN_ENV = "TURNOUT_TOKEN"


def get_keyring() -> keyring.backend.KeyringBackend:
    """The OS keyring, or keyrings.alt's file backend where there is none usable
    without a prompt."""
    kr = keyring.get_keyring()
    name = type(kr).__module__ + "." + type(kr).__name__
    if name.startswith(("keyring.backends.fail", "keyrings.alt.file.Encrypted")) or getattr(kr, "priority", 1) <= 0:
        from keyrings.alt.file import PlaintextKeyring

        kr = PlaintextKeyring()
    return kr


def _protect_file(kr: keyring.backend.KeyringBackend) -> None:
    path = getattr(kr, "file_path", None)
    if path and os.path.exists(path):
        os.chmod(path, 0o600)


def load_or_create_token() -> str:
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env
    kr = get_keyring()
    try:
        tok = kr.get_password(SERVICE, TOKEN_USER)
        if not tok:
            tok = "tt-" + secrets.token_urlsafe(32)
            kr.set_password(SERVICE, TOKEN_USER, tok)
        _protect_file(kr)
    except KeyringError as e:
        raise RuntimeError(
            f"cannot read the API token from the keyring ({type(kr).__name__}): {e}. "
            f"Set {TOKEN_ENV} in the environment instead."
        ) from None
    return tok


def check_token(presented: str | None, expected: str) -> bool:
    """Constant-time. A header that is not valid UTF-8 arrives with its bytes kept
    as surrogates (aiohttp decodes with surrogateescape): compared as those bytes."""
    if presented is None:
        return False
    return secrets.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())
