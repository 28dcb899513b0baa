"""KV states of token prefixes, kept by content: in RAM (LRU, bounded in bytes) and
on disk (the prefixes every session shares, so a restarted or new worker starts warm).

Roles:

* :func:`prefix_hash` names a token prefix (BLAKE2b of its int32 tokens): states are
  looked up by the hash of a request's own prefix at each length held, so finding
  the longest stored prefix of a 20k-token prompt costs a handful of hashes.
* :class:`StateCache` (RAM): llama.cpp sequence states (``llama_state_seq_get_data``
  buffers) keyed by prefix hash, least recently used evicted first, bounded in bytes.
* :class:`RecentPrompts`: the token sequences of the last prompts, so a worker can see
  where a new prompt parts from earlier ones and keep the state of that longest
  common prefix too (SGLang's radix cache keeps every shared node; a sliding-window
  model's cache cannot be cut back afterwards, so the state must be saved when the
  prefill passes that point).
* :class:`DiskStates`: states saved under ``$TURNOUT_CACHE_DIR/kv/`` (else
  ``~/.cache/turnout/kv/``, as :func:`workers.models.cache_dir`), one directory per
  model file + chat template + context settings, one file per prefix hash, the
  total size capped (least recently used files go first). Each file's header names
  the model file, the llama.cpp build and the settings it was computed with, and
  carries its tokens and a CRC of its data: a file that does not match, or is
  short or damaged, is discarded (deleted), never loaded. Files are written to a
  temporary name and renamed, by a background thread, so the prefill is not held
  up and a crash never leaves half a state under a real name.

Pure bookkeeping plus file I/O: :mod:`workers.llama_cpp` owns the llama.cpp calls.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger()

MAGIC = b"TKVS"
FORMAT_VERSION = 1
SUFFIX = ".kvstate"


def prefix_hash(tokens: np.ndarray) -> str:
    """The name of a token prefix (hex; 128 bits)."""
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype=np.int32).tobytes(), digest_size=16).hexdigest()


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@dataclass(slots=True)
class KVState:
    tokens: np.ndarray  # the prompt tokens whose KV state this is
    data: Any  # ctypes uint8 array, as llama_state_seq_get_data wrote it
    size: int


# ---------------------------------------------------------------- RAM


class StateCache:
    """States by prefix hash, LRU, at most ``capacity`` bytes (0: keeps nothing)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self._entries: OrderedDict[str, KVState] = OrderedDict()
        self._lengths: dict[int, int] = {}  # token count -> entries of that length

    def best(self, tokens: np.ndarray, limit: int) -> KVState | None:
        """The longest state whose tokens are a prefix of ``tokens``, at most
        ``limit`` tokens long (the last prompt token must be evaluated for logits)."""
        for n in sorted(self._lengths, reverse=True):
            if n > limit or n > len(tokens):
                continue
            key = prefix_hash(tokens[:n])
            e = self._entries.get(key)
            if e is not None and np.array_equal(e.tokens, tokens[:n]):
                self._entries.move_to_end(key)
                return e
        return None

    def has(self, tokens: np.ndarray) -> bool:
        return prefix_hash(tokens) in self._entries

    def put(self, tokens: np.ndarray, data: Any, size: int) -> KVState | None:
        if size > self.capacity:
            return None
        key = prefix_hash(tokens)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        while self.used + size > self.capacity and self._entries:
            _, old = self._entries.popitem(last=False)
            self._forget(old)
        e = KVState(np.array(tokens, dtype=np.intc), data, size)
        self._entries[key] = e
        self._lengths[len(tokens)] = self._lengths.get(len(tokens), 0) + 1
        self.used += size
        return e

    def _forget(self, e: KVState) -> None:
        self.used -= e.size
        n = len(e.tokens)
        self._lengths[n] -= 1
        if not self._lengths[n]:
            del self._lengths[n]

    def __len__(self) -> int:
        return len(self._entries)


class RecentPrompts:
    """The token sequences of the last ``keep`` prompts (for longest common prefixes)."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._seqs: OrderedDict[str, np.ndarray] = OrderedDict()

    def longest_common(self, tokens: np.ndarray) -> int:
        """The longest prefix ``tokens`` shares with an earlier prompt (not itself)."""
        return max((common_prefix(s, tokens) for s in self._seqs.values()), default=0)

    def add(self, tokens: np.ndarray) -> None:
        key = prefix_hash(tokens)
        self._seqs[key] = np.array(tokens, dtype=np.intc)
        self._seqs.move_to_end(key)
        while len(self._seqs) > self.keep:
            self._seqs.popitem(last=False)


# ---------------------------------------------------------------- identity


def model_fingerprint(path: Path) -> str:
    """A content fingerprint of a model file, cheap on a 20 GB GGUF: its size and a
    SHA-256 over its first and last MiB and 16 evenly spaced 64 KiB samples."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        spots = [0, max(0, size - (1 << 20))] + [size * i // 17 for i in range(1, 17)]
        for i, at in enumerate(spots):
            f.seek(at)
            h.update(f.read((1 << 20) if i < 2 else (64 << 10)))
    return h.hexdigest()[:32]


def build_id(lib_paths: list[Path], version: str, state_version: int) -> str:
    """The llama.cpp build: the bindings' version, the state format's version and a
    SHA-256 of the shared libraries themselves (a rebuild of the same version with
    other flags is another build)."""
    h = hashlib.sha256(f"{version}/{state_version}".encode())
    for p in sorted(set(lib_paths)):
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(str(p).encode())
    return h.hexdigest()[:32]


def llama_build_id() -> str:
    """:func:`build_id` of the llama.cpp that llama-cpp-python loaded."""
    import llama_cpp
    from llama_cpp import llama_cpp as lc

    lib = Path(lc._lib._name).resolve()
    libs = [p.resolve() for p in lib.parent.iterdir() if p.name.startswith(("libllama", "libggml", "llama", "ggml"))]
    return build_id(libs or [lib], llama_cpp.__version__, int(getattr(lc, "LLAMA_STATE_SEQ_VERSION", 0)))


# ---------------------------------------------------------------- disk


class DiskStates:
    """Shared-prefix states on disk (module docstring).

    Options: ``root``: the kv directory (all models). ``identity``: what a state
    must have been computed with to be loaded here: ``model`` (fingerprint),
    ``template`` (hash), ``settings`` (context settings) and ``build`` (llama.cpp);
    the first three name this model's directory, all four are checked against each
    file's header. ``capacity_bytes``: the total size of ``root`` kept (0: nothing is
    saved). ``label``: a readable start of the directory name (the model file's)."""

    def __init__(self, root: Path, identity: dict[str, str], capacity_bytes: int, label: str = "") -> None:
        self.root = root
        self.identity = dict(identity)
        self.capacity = capacity_bytes
        key = hashlib.sha256(json.dumps([identity.get("model"), identity.get("template"),
                                         identity.get("settings")]).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:48]
        self.dir = root / (f"{safe}-{key}" if safe else key)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self.discarded = 0
        self._sweep_temporaries()

    def path_for(self, tokens: np.ndarray) -> Path:
        return self.dir / (prefix_hash(tokens) + SUFFIX)

    def has(self, tokens: np.ndarray) -> bool:
        key = prefix_hash(tokens)
        with self._lock:
            if key in self._pending:
                return True
        return (self.dir / (key + SUFFIX)).exists()

    # -- save

    def save(self, tokens: np.ndarray, data: Any, size: int) -> Future[None] | None:
        """Write the state in the background (once per prefix); returns its future."""
        if self.capacity <= 0 or size > self.capacity:
            return None
        key = prefix_hash(tokens)
        with self._lock:
            if key in self._pending or (self.dir / (key + SUFFIX)).exists():
                return None
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="kv-disk")
            fut = self._pool.submit(self._write, key, np.array(tokens, dtype=np.int32), data, size)
            self._pending[key] = fut
        fut.add_done_callback(lambda _f: self._done(key))
        return fut

    def _done(self, key: str) -> None:
        with self._lock:
            self._pending.pop(key, None)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for the writes under way (tests; shutdown)."""
        with self._lock:
            futs = list(self._pending.values())
        for f in futs:
            f.result(timeout)

    def _header(self, tokens: np.ndarray, size: int, crc: int) -> bytes:
        head = {**self.identity, "format": FORMAT_VERSION, "n_tokens": len(tokens), "size": size, "crc32": crc}
        return json.dumps(head, sort_keys=True).encode()

    def _write(self, key: str, tokens: np.ndarray, data: Any, size: int) -> None:
        mv = memoryview(data).cast("B")[:size]
        head = self._header(tokens, size, zlib.crc32(mv))
        final = self.dir / (key + SUFFIX)
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(MAGIC + struct.pack("<II", FORMAT_VERSION, len(head)) + head)
                f.write(tokens.astype("<i4").tobytes())
                f.write(mv)
            os.replace(tmp, final)
        except OSError as e:
            log.warning("kv_state_save_failed", path=str(final), error=str(e))
            tmp.unlink(missing_ok=True)
            return
        log.info("kv_state_saved", path=str(final), tokens=len(tokens), mb=round(size / 2**20, 1))
        self._evict()

    # -- load

    def load(self, tokens: np.ndarray) -> KVState | None:
        """The state of exactly ``tokens`` if a file holds it and matches this model,
        template, settings and build; a file that does not is deleted."""
        if self.capacity <= 0:
            return None
        path = self.dir / (prefix_hash(tokens) + SUFFIX)
        try:
            f = open(path, "rb")
        except OSError:
            return None
        with f:
            why = ""
            try:
                magic = f.read(4)
                version, n_head = struct.unpack("<II", f.read(8))
                head = json.loads(f.read(n_head)) if magic == MAGIC and version == FORMAT_VERSION else {}
            except (struct.error, ValueError):
                head = {}
            if not head:
                why = "format"
            else:
                why = next((k for k in ("model", "build", "template", "settings")
                            if head.get(k) != self.identity.get(k)), "")
            state: KVState | None = None
            if not why:
                n, size = int(head["n_tokens"]), int(head["size"])
                stored = np.frombuffer(f.read(4 * n), dtype="<i4")
                if len(stored) != n or n != len(tokens) or not np.array_equal(stored, tokens):
                    why = "tokens"
                else:
                    buf = (ctypes.c_uint8 * size)()
                    got = f.readinto(memoryview(buf).cast("B"))
                    if got != size or zlib.crc32(memoryview(buf).cast("B")) != head["crc32"]:
                        why = "damaged"
                    else:
                        state = KVState(np.array(tokens, dtype=np.intc), buf, size)
        if state is None:
            self.discard(path, why)
            return None
        try:
            os.utime(path)  # least recently used goes first
        except OSError:
            pass
        return state

    def discard(self, path: Path, why: str) -> None:
        self.discarded += 1
        log.warning("kv_state_discarded", path=str(path), reason=why)
        path.unlink(missing_ok=True)

    # -- size cap

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        for p in self.root.glob(f"*/*{SUFFIX}"):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def _evict(self) -> None:
        files = self._files()
        total = sum(s for _, s, _ in files)
        for _, size, p in files:
            if total <= self.capacity:
                break
            p.unlink(missing_ok=True)
            total -= size
            log.info("kv_state_evicted", path=str(p))

    def _sweep_temporaries(self) -> None:
        # A worker killed mid-write leaves a temporary file (never a real name):
        # remove any such file that is not being written right now (an hour old).
        import time

        for p in self.dir.glob(".*.tmp") if self.dir.exists() else ():
            try:
                if time.time() - p.stat().st_mtime > 3600:
                    p.unlink()
            except OSError:
                pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
