"""The shape of the signatures turnout's local models put on their thinking blocks
(made by workers/signing.py, read by gateway/history.py to tell its own thinking
blocks from a provider's)."""

from __future__ import annotations

PREFIX = "turnout1."


def is_turnout_signature(signature: str) -> bool:
    """Whether a signature has turnout's shape (any install); use
    ``workers.signing.Signer.verify`` to know whether it is this install's."""
    return signature.startswith(PREFIX)
