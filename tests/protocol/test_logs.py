"""Logging set-up (protocol/logs.py): whatever fails in a turnout process, what
reaches stderr is one JSON line per event."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PRELUDE = "from protocol.logs import setup_logging; setup_logging('t', json=True)\n"


def _run(code: str) -> tuple[int, list[str]]:
    r = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    return r.returncode, r.stderr.splitlines()


@pytest.mark.parametrize(("code", "event", "text"), [
    ("def f():\n    raise RuntimeError('boom')\nf()", "uncaught_exception", "RuntimeError: boom"),
    ("import threading\ndef f():\n    raise KeyError('in a thread')\n"
     "t = threading.Thread(target=f, name='io'); t.start(); t.join()", "thread_crashed", "KeyError: 'in a thread'"),
])
def test_a_failure_is_one_json_line_with_its_traceback(code: str, event: str, text: str) -> None:
    _, lines = _run(code)
    assert len(lines) == 1, lines
    rec = json.loads(lines[0])
    assert rec["event"] == event and rec["proc"] == "t"
    assert "Traceback (most recent call last)" in rec["exception"] and text in rec["exception"]


def test_a_librarys_exception_is_one_line_naming_its_class_not_its_traceback() -> None:
    """aiohttp's 'Error handling request' traceback may quote what a client sent:
    the line keeps the exception's class; the traceback only at debug level."""
    code = ("import logging\ntry:\n    1/0\nexcept ZeroDivisionError:\n"
            "    logging.getLogger('aiohttp.server').exception('Error handling request')")
    _, lines = _run(code)
    assert len(lines) == 1, lines
    rec = json.loads(lines[0])
    assert rec["event"] == "Error handling request" and rec["error"] == "ZeroDivisionError"
    assert "exception" not in rec


def test_library_info_lines_stay_out_unless_debugging() -> None:
    _, lines = _run("import logging\nlogging.getLogger('mcp').info('Processing request')\n"
                    "logging.getLogger('mcp').warning('odd')")
    assert [json.loads(x)["event"] for x in lines] == ["odd"]


def test_a_broken_stderr_loses_the_line_not_the_process() -> None:
    r = subprocess.run([sys.executable, "-c", PRELUDE + "import os, structlog\nos.close(2)\n"
                        "structlog.get_logger().info('x')\nprint('alive')"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert r.returncode == 0 and r.stdout == "alive\n", r
