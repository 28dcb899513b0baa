"""Runs last in the suite (tests/conftest.py puts it there): no test key and no API
token in any response the tests received or any log turnout wrote (tests/leakcheck.py)."""

from __future__ import annotations

import pytest

from tests import leakcheck
from tests.leakcheck import KEY_MARKER, Record
from tests.upstreams.fake import FakeUpstreams


def test_record_finds_a_key_split_across_reads() -> None:
    r = Record()
    owner, other = object(), object()
    r.feed(owner, b'{"text": "sk-test' + KEY_MARKER[:3], "x")
    r.feed(other, b"unrelated", "y")
    assert r.hits == []
    r.feed(owner, KEY_MARKER[3:] + b'openai"}', "x")
    assert len(r.hits) == 1 and r.hits[0].startswith("x:")


def test_every_test_key_carries_the_marker() -> None:
    assert all(KEY_MARKER.decode() in k for k in FakeUpstreams().keys.values())


def test_no_secret_in_any_response_or_log_of_the_suite() -> None:
    rec = leakcheck.RECORD
    if not rec.processes:
        pytest.skip("no turnout process ran in this session: run with the suite")
    assert rec.scanned_bytes > 0, "the response hooks saw nothing: they are not installed"
    assert rec.hits == [], "a test key reached a response:\n" + "\n".join(rec.hits[:10])
    logs = leakcheck.log_hits()
    assert logs == [], "\n".join(logs[:10])
