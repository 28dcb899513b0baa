"""Signatures of the thinking blocks local models write.

Anthropic's API gives every thinking block an opaque ``signature`` and clients
(Claude Code) send the block back with it on the next turn; a provider rejects a
thinking block whose signature it did not make. turnout signs what its local models
think so that it can tell, later, which thinking blocks in a conversation are its
own (keep them for a local model) and which came from elsewhere (drop them before
switching provider), and so that a client that insists on a signature gets one.

Format: ``turnout1.`` + base64url (no padding) of HMAC-SHA256(key, thinking text).
The key is per install: 32 random bytes in ``$XDG_DATA_HOME/turnout/signing.key``
(else ``~/.local/share/turnout/signing.key``; ``$TURNOUT_SIGNING_KEY_FILE``
overrides), created on first use with mode 0600, exclusively, so that concurrent
workers agree on one key. A signature proves only "this turnout install produced
this text": it is not a secret, and the key never leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from turnout.protocol.signature import PREFIX, is_turnout_signature

__all__ = ["PREFIX", "Signer", "install_signer", "is_turnout_signature", "key_path", "load_key"]
KEY_BYTES = 32


def key_path() -> Path:
    env = os.environ.get("TURNOUT_SIGNING_KEY_FILE")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data).expanduser() if data else Path.home() / ".local" / "share"
    return base / "turnout" / "signing.key"


def load_key(path: Path | None = None) -> bytes:
    """The install's signing key, created on first use (see the module docstring)."""
    path = path or key_path()
    try:
        key = path.read_bytes()
        if len(key) == KEY_BYTES:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
    finally:
        os.close(fd)
    try:
        # link() fails if another process created the key first: then use theirs.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise OSError(f"{path}: a signing key must be {KEY_BYTES} bytes; delete the file to make a new one")
    return key


class Signer:
    """Signs and verifies thinking text with one key (load it once per process)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, thinking: str) -> str:
        mac = hmac.new(self._key, thinking.encode("utf-8"), hashlib.sha256).digest()
        return PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def verify(self, thinking: str, signature: str) -> bool:
        """True if ``signature`` is this install's signature of ``thinking``."""
        return signature.startswith(PREFIX) and hmac.compare_digest(self.sign(thinking), signature)


def install_signer() -> Signer:
    """A signer with the install's key; with a key for this process only when the key
    file cannot be written (a read-only home), so that signing never fails a request."""
    try:
        return Signer(load_key())
    except OSError:
        return Signer(secrets.token_bytes(KEY_BYTES))
