"""The ``turnout`` command line (cli/): every command is there without importing any
implementation, each names an implementation that exists, a command whose
implementation cannot be imported fails loudly, and ``python -m turnout.cli`` is the
same command as the ``turnout`` entry point down to stopping a supervisor it started."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.helpers import poll_until
from turnout.cli import main as cli_main
from turnout.cli.common import Lazy
from turnout.supervisor.launch import free_port

COMMANDS = ["up", "down", "status", "ps", "scale", "load", "evict", "logs", "token", "models", "formats",
            "keys", "endpoints", "bench", "mcp", "claude"]


def _handlers(parser: argparse.ArgumentParser, path: tuple[str, ...] = (),
              inherited: object = None) -> dict[tuple[str, ...], object]:
    """Every leaf command's handler (its own ``func`` default, else its group's), by its words."""
    func = parser.get_default("func") or inherited
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: func}
    out: dict[tuple[str, ...], object] = {}
    for name, p in subs[0].choices.items():
        out.update(_handlers(p, (*path, name), func))
    return out


def _run(*args: str, env: dict[str, str] | None = None, module: str = "turnout.cli",
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_every_command_without_importing_an_implementation() -> None:
    code = ("import sys, contextlib, io\n"
            "from turnout.cli.main import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])\n"
            "print(out.getvalue())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('msgspec', 'zmq', 'structlog', 'mcp',"
            " 'aiohttp', 'llama_cpp', 'numpy')"
            " or m.split('.')[:2] in (['turnout', 'gateway'], ['turnout', 'supervisor'], ['turnout', 'workers'],"
            " ['turnout', 'protocol'])"
            " or m.startswith('turnout.bench.') and m != 'turnout.bench.workloads'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    *help_lines, imported = r.stdout.strip().splitlines()
    assert imported == "[]"
    listed = next(line for line in help_lines if line.strip().startswith("{")).strip()
    assert listed == "{" + ",".join(COMMANDS) + "}"


def test_every_command_names_an_implementation_that_exists() -> None:
    handlers = _handlers(cli_main.build_parser())
    assert {words[0] for words in handlers} == set(COMMANDS)
    lazies = {words: h for words, h in handlers.items() if isinstance(h, Lazy)}
    assert set(handlers) - set(lazies) == {("up",), ("token",), ("claude",)}  # these import as they go
    for words, lz in lazies.items():
        impl = getattr(importlib.import_module(lz.module), lz.func, None)
        assert callable(impl), (words, lz)
    for words, handler in handlers.items():
        assert callable(handler), words


@pytest.mark.parametrize(("argv", "module"), [
    (["keys", "list"], "turnout.gateway.keys"),
    (["ps"], "turnout.supervisor.daemon"),
    (["models", "list"], "turnout.workers.models"),
    (["claude", "remove"], "turnout.gateway.claude_setup"),
    (["token"], "turnout.gateway.auth"),
])
def test_a_command_whose_implementation_cannot_be_imported_says_which(
        argv: list[str], module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    assert cli_main.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"turnout {argv[0]}: cannot import {module} (ModuleNotFoundError: import of {module} halted; None in sys.modules)\n"


def test_a_broken_dependency_loses_no_command_and_fails_loudly(tmp_path: Path) -> None:
    # A library that raises on import (as a half-installed package does) takes only
    # its own commands down, each with a message naming the module, never the others.
    (tmp_path / "mcp").mkdir()
    (tmp_path / "mcp" / "__init__.py").write_text("raise ImportError('half-installed')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = _run("mcp", "--port", "1", env=env)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == "turnout mcp: cannot import turnout.gateway.mcp.stdio (ImportError: half-installed)"
    assert "mcp" in _run("--help", env=env).stdout
    ok = _run("formats", "list", "--json", env=env)
    assert ok.returncode == 0 and json.loads(ok.stdout)


def test_python_m_turnout_cli_and_the_entry_point_are_one_command() -> None:
    new = _run("--help")
    entry = subprocess.run([str(Path(sys.executable).parent / "turnout"), "--help"], capture_output=True, text=True,
                           timeout=60)
    assert new.returncode == entry.returncode == 0
    assert new.stdout == entry.stdout
    bad = _run("ps", "--bogus")
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


def test_a_supervisor_started_by_python_m_cli_is_stopped_by_it(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[models]]\nname = "fake"\nbackend = "fake"\n')
    port = free_port()
    runtime = Path(tempfile.mkdtemp(prefix="to-", dir="/tmp"))
    os.rmdir(runtime)
    inst = ["--port", str(port), "--runtime-dir", str(runtime)]
    env = dict(os.environ, TURNOUT_TOKEN="test-token-0123456789")
    up = subprocess.Popen([sys.executable, "-m", "turnout.cli", "up", "--config", str(cfg), *inst],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        def ready() -> bool:
            r = _run("ps", "--json", *inst, env=env)
            return r.returncode == 0 and bool(json.loads(r.stdout).get("gateway_ready"))  # omitted while False

        poll_until(ready, 60, 0.2)
        down = _run("down", *inst, env=env)
        assert down.returncode == 0 and "stopped" in down.stdout, down
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            for p in [*psutil.Process(up.pid).children(recursive=True), psutil.Process(up.pid)]:
                p.kill()
            up.wait()
