"""The browser backend's pure parts (workers/browser_pages.py): which URLs a page may
load. (Driving Chromium: tests/e2e/test_browser_tools.py.)"""

from __future__ import annotations

import pytest

from turnout.workers.browser_pages import url_allowed
from turnout.workers.cdp import find_executable


@pytest.mark.parametrize("url", ["http://example.com/", "https://a.b/c?d#e"])
def test_no_allowlist_allows_every_http_url(url: str) -> None:
    assert url_allowed(url, [])


@pytest.mark.parametrize("url", ["file:///etc/passwd", "chrome://settings", "javascript:alert(1)", "ftp://x/"])
def test_other_schemes_are_never_loaded_as_documents(url: str) -> None:
    assert not url_allowed(url, [])
    assert not url_allowed(url, ["*"])


def test_globs_match_a_url_or_its_origin() -> None:
    allow = ["http://127.0.0.1:8000", "https://*.example.com/docs/*"]
    assert url_allowed("http://127.0.0.1:8000/any/path?q=1", allow)
    assert not url_allowed("http://127.0.0.1:8001/", allow)
    assert url_allowed("https://www.example.com/docs/a", allow)
    assert not url_allowed("https://www.example.com/blog", allow)
    assert not url_allowed("https://example.com.evil.test/docs/a", allow)
    assert not url_allowed("https://evil.test/.example.com/docs/a", allow)  # a * stays in the host
    assert not url_allowed("https://www.example.com@evil.test/docs/a", allow)  # user info is not the host


def test_ports_and_schemes() -> None:
    assert url_allowed("https://example.com/", ["example.com"]) and url_allowed("http://example.com/", ["example.com"])
    assert not url_allowed("https://example.com:8443/", ["example.com"])  # no port: the default one
    assert url_allowed("https://example.com:8443/", ["example.com:*"])
    assert not url_allowed("http://example.com/", ["https://example.com"])


def test_a_configured_executable_that_is_not_one_is_not_found() -> None:
    assert find_executable("/nonexistent/chromium") is None
