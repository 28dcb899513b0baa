"""With no TURNOUT_TOKEN, turnout generates a token, keeps it in the keyring, and
never writes it to its log."""

from __future__ import annotations

import os
import subprocess
import sys

import anthropic
import pytest


def test_keyring_token_end_to_end(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(env={"TURNOUT_TOKEN": ""})
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_TOKEN"}
    token = subprocess.run([sys.executable, "-m", "turnout.cli", "token"], capture_output=True,
                           text=True, env=env, check=True).stdout.strip()
    assert token.startswith("tt-")
    ok = anthropic.Anthropic(base_url=t.base_url, api_key=token, max_retries=0)
    assert ok.messages.create(model="fake", max_tokens=2, messages=[{"role": "user", "content": "a b"}]).content
    bad = anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)  # the env token is not it
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="fake", max_tokens=2, messages=[{"role": "user", "content": "a b"}])
    t.stop()
    assert token not in t.log_text()
