"""Small helpers shared by the tests."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Real requests Claude Code 2.1.197 sent (from ../shared/fixtures/claude-code; see its README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude-code"


def poll_until(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``fn`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def tool_bin(name: str, what: str) -> str:
    """A CLI that ./run tests installs in .tools/ with npm; missing fails under CI."""
    found = shutil.which(name) or str(ROOT / ".tools/node_modules/.bin" / name)
    if not os.path.exists(found):
        if os.environ.get("CI"):
            pytest.fail(f"the {what} is missing: ./run tests installs it with npm")
        pytest.skip(f"{what} not installed (./run tests installs it)")
    return found


def claude_bin() -> str:
    return tool_bin("claude", "Claude Code CLI")


# ------------------------------------------------------------ a second local user

OTHER_UID = OTHER_GID = 65534  # nobody: the other local user of the attack tests


def other_user(*argv: str) -> list[str]:
    """``argv`` run as another local user (nobody) through setpriv. Skips the test
    where that cannot be done (not root, no setpriv)."""
    if os.geteuid() != 0:
        pytest.skip("acting as a second local user needs root (setpriv --reuid)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_GID}", "--clear-groups", *argv]


_OTHER_PYTHON: list[str] = []


def other_user_python(*args: str) -> tuple[list[str], dict[str, str]]:
    """(argv, env) running ``python ARGS`` as the other user with pyzmq, msgspec and
    this tree importable. The venv's interpreter may live under a home the other user
    cannot enter (here /root), so the same CPython version installed system-wide runs
    with the venv's site-packages on PYTHONPATH; skips the test if there is none."""
    if not _OTHER_PYTHON:
        ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
        env = _other_env()
        for cand in (f"/usr/bin/{ver}", f"/usr/local/bin/{ver}", shutil.which(ver) or ""):
            if not cand or not os.path.exists(cand):
                continue
            probe = subprocess.run(other_user(cand, "-c", "import zmq, msgspec, turnout.protocol.messages"),
                                   env=env, capture_output=True, cwd="/")
            if probe.returncode == 0:
                _OTHER_PYTHON.append(cand)
                break
        else:
            pytest.skip(f"no {ver} the other user can run with this venv's packages")
    return other_user(_OTHER_PYTHON[0], *args), _other_env()


_SITE_HOOK: list[str] = []


def _other_env() -> dict[str, str]:
    """PYTHONPATH for the other user: the venv's site-packages, and a
    ``sitecustomize`` that reads their ``.pth`` files as a venv's interpreter does
    (turnout's editable install maps ``turnout.*`` onto this tree in one of them)."""
    import sysconfig
    import tempfile

    site_dirs = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    if not _SITE_HOOK:
        hook = tempfile.mkdtemp(prefix="turnout-site-")
        os.chmod(hook, 0o755)
        Path(hook, "sitecustomize.py").write_text(
            "import site\n" + "".join(f"site.addsitedir({d!r})\n" for d in site_dirs))
        os.chmod(Path(hook, "sitecustomize.py"), 0o644)
        _SITE_HOOK.append(hook)
    return {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": os.pathsep.join([_SITE_HOOK[0], *site_dirs]),
            "PYTHONDONTWRITEBYTECODE": "1"}


def cancel_mid_stream(port: int, token: str, model: str = "fake") -> None:
    """A streaming request whose client goes away after its third text delta (it
    closes the socket mid-stream)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps({
        "model": model, "max_tokens": 10000, "stream": True,
        "messages": [{"role": "user", "content": "never ending story"}]}),
        headers={"x-api-key": token, "content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    deltas = 0
    while deltas < 3:
        if r.readline().startswith(b"event: content_block_delta"):
            deltas += 1
    assert conn.sock is not None
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
