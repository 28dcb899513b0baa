"""Thinking-block signatures: the per-install key, sign/verify, and the signature
that the shared AnswerWriter attaches when a thinking block ends."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Message, TextPart, ThinkingConfig
from turnout.workers import chat_templates as ct
from turnout.workers import signing
from turnout.workers.tool_calls import AnswerWriter


def writer(req: ChatRequest, s: signing.Signer) -> AnswerWriter:
    rendered = ct.render(req, ct.detect("", "qwen2", chat_format="chatml"))
    return AnswerWriter("r", req, rendered, sign=s.sign)


def test_key_is_created_once_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = signing.key_path()
    assert path == tmp_path / "data" / "turnout" / "signing.key"
    key = signing.load_key()
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert signing.load_key() == key


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "k" / "signing.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: signing.load_key(path), range(16)))
    assert len(keys) == 1
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp files left


def test_sign_and_verify() -> None:
    s = signing.Signer(b"k" * 32)
    sig = s.sign("I should list the files.")
    assert sig.startswith("turnout1.") and signing.is_turnout_signature(sig)
    assert s.verify("I should list the files.", sig)
    assert not s.verify("I should delete the files.", sig)
    assert not signing.Signer(b"x" * 32).verify("I should list the files.", sig)  # another install
    assert not s.verify("I should list the files.", "EqQKCkYIBhgCKkB...")  # Anthropic's


def test_answer_writer_signs_a_thinking_block_before_the_answer() -> None:
    s = signing.Signer(b"k" * 32)
    req = ChatRequest(model="m", max_tokens=10, messages=[Message("user", [TextPart("q")])],
                      thinking=ThinkingConfig(type="enabled", budget_tokens=100))
    w = writer(req, s)
    out: list[m.StreamMsg] = []
    for piece in ["<thi", "nk>Step one. ", "Step two.</th", "ink>\n\nDone."]:
        out += w.feed(piece)
    out += w.finish()
    kinds = [(type(x).__name__, getattr(x, "text", ""), getattr(x, "signature", "")) for x in out]
    thought = "".join(x.text for x in out if isinstance(x, m.ThinkingDelta))
    assert thought == "Step one. Step two."
    sig_at = next(i for i, x in enumerate(out) if isinstance(x, m.ThinkingDelta) and x.signature)
    text_at = next(i for i, x in enumerate(out) if isinstance(x, m.TextDelta))
    assert sig_at < text_at, kinds
    assert s.verify(thought, out[sig_at].signature)  # type: ignore[union-attr]


def test_a_thinking_block_cut_off_by_max_tokens_is_still_signed() -> None:
    s = signing.Signer(b"k" * 32)
    req = ChatRequest(model="m", max_tokens=10, messages=[Message("user", [TextPart("q")])],
                      thinking=ThinkingConfig(type="enabled", budget_tokens=100))
    w = writer(req, s)
    out = w.feed("<think>half a thou") + w.finish()
    sigs = [x.signature for x in out if isinstance(x, m.ThinkingDelta) and x.signature]
    assert len(sigs) == 1 and s.verify("half a thou", sigs[0])
