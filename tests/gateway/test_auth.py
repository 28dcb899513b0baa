"""The API token: environment first, else generated once and kept in the keyring."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from turnout.gateway import auth


def test_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_TOKEN", "from-env")
    assert auth.load_or_create_token() == "from-env"


def test_generated_once_and_kept_in_the_keyring_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_TOKEN", raising=False)
    first = auth.load_or_create_token()
    assert first.startswith("tt-") and len(first) > 30
    assert auth.load_or_create_token() == first  # the same one next time
    kr = auth.get_keyring()
    assert kr.get_password(auth.SERVICE, auth.TOKEN_USER) == first
    path = getattr(kr, "file_path", None)
    if path:  # keyrings.alt's file backend (no desktop keyring here)
        assert path.startswith(os.environ["XDG_DATA_HOME"])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # another process (the CLI) reads the same token
    out = subprocess.run([sys.executable, "-m", "turnout.cli", "token"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "TURNOUT_TOKEN"}, check=True)
    assert out.stdout.strip() == first


def test_check_token() -> None:
    assert auth.check_token("abc", "abc")
    assert not auth.check_token("abd", "abc")
    assert not auth.check_token(None, "abc")
    assert not auth.check_token("", "abc")
