"""Model registry: default model assembly, GGUF metadata, add/list/remove, and pull
against a local server that speaks the Hugging Face resolve-URL protocol."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from turnout.cli import models as cli_models
from turnout.workers import models


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TURNOUT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_model_path() == tmp_path / "xdg/turnout/models/gemma-3-270m-q4_k_m.gguf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home/.cache/turnout"


def test_gguf_info_reads_the_tiny_model(tiny_gguf: Path) -> None:
    info = models.gguf_info(tiny_gguf)
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert "<|im_start|>" in info.chat_template
    assert (info.bos_token_id, info.eos_token_id, info.eot_token_id) == (1, 2, 4)
    assert info.stop_token_ids == [2, 4]


def test_gguf_info_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(models.ModelError, match="not a GGUF"):
        models.gguf_info(bad)
    with pytest.raises(models.ModelError, match="no such model file"):
        models.gguf_info(tmp_path / "missing.gguf")


def test_add_list_remove_local(tiny_gguf: Path) -> None:
    e = models.add_model(tiny_gguf)
    assert e.name == "tiny" and e.present
    names = {m.name: m for m in models.list_models()}
    assert names["tiny"].path == str(tiny_gguf.resolve())
    assert names[models.DEFAULT_MODEL_NAME].source == "default"
    assert models.resolve("tiny") == tiny_gguf.resolve()
    models.remove("tiny")
    assert "tiny" not in {m.name for m in models.list_models()}
    assert tiny_gguf.exists()  # a local file is only forgotten, never deleted
    with pytest.raises(models.ModelError, match="no model named"):
        models.remove("tiny")


def test_locate_finds_without_assembling(tiny_gguf: Path, cache: Path) -> None:
    """What the supervisor sizes a model by: the bundled one only once assembled, a
    registered name, a path; nothing is assembled or downloaded to find out."""
    assert models.locate("") is None and not models.default_model_path().exists()
    models.add_model(tiny_gguf)
    assert models.locate("tiny") == tiny_gguf.resolve()
    assert models.locate(str(tiny_gguf)) == tiny_gguf
    assert models.locate(str(cache / "nope.gguf")) is None
    models.default_model_path().parent.mkdir(parents=True, exist_ok=True)
    models.default_model_path().write_bytes(tiny_gguf.read_bytes())
    assert models.locate("") == models.default_model_path()


def test_truncated_or_lying_headers_are_a_clear_error(tmp_path: Path) -> None:
    """Issue 14: an 8-byte .gguf made `turnout models add` die with a struct.error
    traceback. Each of these is a ModelError naming the file, and the CLI says it in
    one line."""
    import struct
    import subprocess
    import sys

    head = b"GGUF" + struct.pack("<I", 3)
    cases = {
        "eight": head,
        "no-kv": head + struct.pack("<QQ", 0, 1),
        "long-key": head + struct.pack("<QQ", 0, 1) + struct.pack("<Q", 2**62) + b"k",
        "huge-array": head + struct.pack("<QQ", 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 0, 2**60),
        "far-key": head + struct.pack("<QQ", 0, 2) + struct.pack("<Q", 2**63 - 2) + b"k",
    }
    for name, data in cases.items():
        f = tmp_path / f"{name}.gguf"
        f.write_bytes(data)
        with pytest.raises(models.ModelError, match=name):
            models.gguf_info(f)
    r = subprocess.run([sys.executable, "-m", "turnout.cli", "models", "add", str(tmp_path / "eight.gguf")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("turnout models: ") and "eight.gguf" in r.stderr and r.stderr.count("\n") == 1


def test_add_refuses_a_non_gguf(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(models.ModelError):
        models.add_model(f)


def test_parse_hf_url() -> None:
    assert models.parse_hf_url("hf://org/repo/sub/f.gguf@v1") == ("org/repo", "sub/f.gguf", "v1")
    with pytest.raises(models.ModelError):
        models.parse_hf_url("hf://org/f.gguf")
    with pytest.raises(models.ModelError):
        models.parse_hf_url("https://x/y/z.gguf")


# ---------------------------------------------------------------- pull


class HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``/{org}/{repo}/resolve/{revision}/{filename}`` (HEAD and GET) with the
    headers huggingface_hub checks: X-Repo-Commit, ETag, Content-Length."""

    # set per server by the fixture, on a fresh subclass (never shared between tests)
    files: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[list[tuple[str, str]]] = []

    def _find(self) -> bytes | None:
        self.seen.append((self.command, self.path))
        path = self.path.split("?", 1)[0]
        return self.files.get(path)

    def _headers(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_HEAD(self) -> None:
        data = self._find()
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(data)

    def do_GET(self) -> None:
        data = self._find()
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(data)
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[HubHandler]]:
    handler = type("H", (HubHandler,), {"files": {"/acme/tiny-GGUF/resolve/main/tiny-q8.gguf": tiny_gguf.read_bytes()}, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield handler
    finally:
        server.shutdown()


def test_pull_downloads_registers_and_removes(hub: type[HubHandler], tiny_gguf: Path, cache: Path) -> None:
    e = models.pull("hf://acme/tiny-GGUF/tiny-q8.gguf", progress=False)
    assert e.name == "tiny-q8" and e.source == "hf://acme/tiny-GGUF/tiny-q8.gguf"
    path = Path(e.path)
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert cache in path.parents
    assert ("GET", "/acme/tiny-GGUF/resolve/main/tiny-q8.gguf") in hub.seen
    assert models.gguf_info(path).architecture == "llama"
    assert "tiny-q8" in {m.name for m in models.list_models()}
    models.remove("tiny-q8")
    assert not path.exists()  # downloaded by turnout: deleted


def test_pull_of_a_missing_file_says_so(hub: type[HubHandler]) -> None:
    with pytest.raises(models.ModelError, match=r"cannot pull hf://acme/tiny-GGUF/nope\.gguf"):
        models.pull("hf://acme/tiny-GGUF/nope.gguf", progress=False)


def test_cli_list_and_add(tiny_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="turnout")
    cli_models.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", "add", str(tiny_gguf), "--name", "t1"])
    assert args.func(args) == 0
    args = parser.parse_args(["models", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "t1\t" in out and "gemma3-270m\t" in out
    args = parser.parse_args(["models", "remove", "nope"])
    assert args.func(args) == 1
    assert "no model named 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_assembles_atomically_and_idempotently(cache: Path) -> None:
    p = models.ensure_default_model(progress=False)
    assert p == models.default_model_path() and p.stat().st_size > 250_000_000
    assert not list(p.parent.glob(".assemble-*"))
    mtime = p.stat().st_mtime_ns
    assert models.ensure_default_model(progress=False) == p
    assert p.stat().st_mtime_ns == mtime  # not rewritten
    info = models.gguf_info(p)
    assert (info.architecture, info.context_length, info.chat_template) == ("gemma3", 32768, "")
    assert 106 in info.stop_token_ids  # <end_of_turn>
