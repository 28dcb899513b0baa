"""Memory intelligence of the supervisor: pure policy, plus a thin psutil sampler.

The policy functions take a snapshot (:class:`WorkerSnap` list, available memory,
:class:`Watermarks`) and return decisions; they never touch a process, a socket or a
clock, so they are unit-tested directly (tests/supervisor/test_memory.py). The
arbiter owns the clock and the processes and applies what they decide.

Levels: ``none`` < ``soft`` < ``hard``.

* ``soft`` (available below the soft watermark): new loads are refused and idle
  workers are evicted, lowest priority first, then least recently used.
* ``hard`` (below the hard watermark): as ``soft``, and when no idle worker is left
  the lowest-priority busy worker is drained and stopped.
* Hysteresis: a level is left only when available memory is ``hysteresis_mb`` above
  its watermark, so a worker stopping and starting near the line does not flap.
* Cooldown: one eviction per ``cooldown_s``, so the sampler sees the freed memory
  before the next victim is picked (freeing takes a moment: SIGTERM, exit, reap).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

Level = Literal["none", "soft", "hard"]
_RANK: dict[str, int] = {"none": 0, "soft": 1, "hard": 2}
MB = 1024 * 1024


@dataclass(frozen=True)
class Watermarks:
    """Thresholds in MiB of available memory (see the module docstring)."""

    soft_mb: float
    hard_mb: float
    hysteresis_mb: float = 256.0
    cooldown_s: float = 5.0
    headroom_mb: float = 0.0


def resolve_watermarks(total_mb: float, soft_mb: float, hard_mb: float, hysteresis_mb: float,
                       cooldown_s: float, headroom_mb: float = 0.0) -> Watermarks:
    """Config values (0: default from total memory) -> watermarks. A hard mark above
    the soft one is lowered to it: hard pressure is always also soft pressure."""
    soft = soft_mb if soft_mb > 0 else max(1024.0, 0.10 * total_mb)
    hard = hard_mb if hard_mb > 0 else max(512.0, 0.05 * total_mb)
    return Watermarks(soft_mb=soft, hard_mb=min(hard, soft), hysteresis_mb=max(0.0, hysteresis_mb),
                      cooldown_s=max(0.0, cooldown_s), headroom_mb=max(0.0, headroom_mb))


def next_level(previous: Level, available_mb: float, w: Watermarks) -> Level:
    """The pressure level after a sample, with hysteresis: a level is entered when
    available memory falls below its watermark, and left only once it is
    ``hysteresis_mb`` above it."""
    if available_mb < w.hard_mb:
        return "hard"
    if previous == "hard" and available_mb < w.hard_mb + w.hysteresis_mb:
        return "hard"
    if available_mb < w.soft_mb:
        return "soft"
    if _RANK[previous] >= 1 and available_mb < w.soft_mb + w.hysteresis_mb:
        return "soft"
    return "none"


@dataclass(frozen=True)
class WorkerSnap:
    """One worker as the memory policy sees it.

    ``last_used`` is a monotonic time (larger: used more recently); ``state`` is the
    arbiter's (only ``ready`` workers are candidates: one that is loading, draining
    or stopping is already on its way somewhere)."""

    id: str
    model: str
    priority: int
    rss_mb: float
    in_flight: int
    last_used: float
    state: str = "ready"


def eviction_order(workers: list[WorkerSnap]) -> list[WorkerSnap]:
    """Idle ready workers, in the order they should go: lowest priority first, then
    least recently used, then the largest (frees most)."""
    idle = [w for w in workers if w.state == "ready" and w.in_flight == 0]
    return sorted(idle, key=lambda w: (w.priority, w.last_used, -w.rss_mb))


def busy_victim(workers: list[WorkerSnap]) -> WorkerSnap | None:
    """Under hard pressure with no idle worker left: the busy worker to drain and
    stop. Lowest priority first; among equals the largest RSS (it is the one growing,
    most likely), then the one holding the fewest requests."""
    busy = [w for w in workers if w.state == "ready" and w.in_flight > 0]
    if not busy:
        return None
    return min(busy, key=lambda w: (w.priority, -w.rss_mb, w.in_flight))


@dataclass(frozen=True)
class Eviction:
    worker_id: str
    drain: bool  # a busy worker: drained (bounded) before it is stopped
    reason: str


def plan_eviction(level: Level, workers: list[WorkerSnap], now: float, last_eviction: float,
                  w: Watermarks) -> Eviction | None:
    """At most one eviction per call and per ``cooldown_s``: the next idle worker
    under soft or hard pressure, else (hard only) the busy victim."""
    if level == "none" or now - last_eviction < w.cooldown_s:
        return None
    order = eviction_order(workers)
    if order:
        v = order[0]
        return Eviction(v.id, drain=False, reason=f"evicted: memory pressure ({level}), idle")
    if level == "hard":
        b = busy_victim(workers)
        if b is not None:
            return Eviction(b.id, drain=True, reason=f"evicted: memory pressure (hard), rss {b.rss_mb:.0f} MiB")
    return None


@dataclass(frozen=True)
class Admission:
    """``admit``: load now. ``evict``: stop these idle workers first, then load.
    ``refuse``: answer 529 with Retry-After."""

    decision: Literal["admit", "evict", "refuse"]
    evict: tuple[str, ...] = ()
    reason: str = ""


def admit(expected_mb: float, priority: int, available_mb: float, level: Level,
          workers: list[WorkerSnap], w: Watermarks) -> Admission:
    """Can a model of footprint ``expected_mb`` (priority ``priority``) be loaded?

    It fits when, after it, available memory stays above the soft watermark plus the
    headroom. If not, idle workers of no higher priority are evicted (in
    :func:`eviction_order`) until it would fit; if even that is not enough, or memory
    is already under pressure, the load is refused. Busy workers are never evicted
    to make room for a load."""
    if level != "none":
        return Admission("refuse", reason=f"memory pressure ({level}): {available_mb:.0f} MiB available")
    need = expected_mb + w.soft_mb + w.headroom_mb - available_mb
    if need <= 0:
        return Admission("admit")
    freed = 0.0
    victims: list[str] = []
    for v in eviction_order(workers):
        if v.priority > priority:
            break  # sorted by priority: nothing cheaper is left
        victims.append(v.id)
        freed += v.rss_mb
        if freed >= need:
            return Admission("evict", tuple(victims), reason=f"needs {need:.0f} MiB more")
    return Admission("refuse", reason=(f"not enough memory: the model needs about {expected_mb:.0f} MiB, "
                                       f"{available_mb:.0f} MiB available, {w.soft_mb:.0f} MiB kept free"))


def kv_cache_mb(context: int, n_layers: int, n_embd: int, n_head: int, n_head_kv: int,
                bytes_per_elem: float = 2.0) -> float:
    """KV cache of a transformer for ``context`` tokens: K and V, per layer, of
    ``n_embd * n_head_kv / n_head`` elements each (grouped-query attention), f16."""
    if n_head <= 0 or context <= 0:
        return 0.0
    per_token = 2 * n_layers * n_embd * (n_head_kv / n_head) * bytes_per_elem
    return context * per_token / MB


def expected_footprint_mb(file_bytes: int, kv_mb: float, overhead_mb: float = 150.0) -> float:
    """A model's expected RSS: its weights (the file, memory-mapped and touched) +
    its KV cache + the runtime (interpreter, libraries, compute buffers)."""
    return file_bytes / MB + kv_mb + overhead_mb


_ARCH_KEYS = ("context_length", "block_count", "embedding_length", "attention.head_count", "attention.head_count_kv")


def gguf_footprint_mb(path: str, context: int) -> float:
    """Footprint of a GGUF model from its header. 0 when the file is unreadable, so
    the caller falls back to admitting. Remembered per file (path, size, mtime) and
    context: the supervisor asks on every status and admission, on its main loop."""
    import os

    try:
        st = os.stat(path)
    except OSError:
        return 0.0
    return _gguf_footprint_mb(path, st.st_size, st.st_mtime_ns, context)


@functools.lru_cache(maxsize=64)
def _gguf_footprint_mb(path: str, size: int, mtime_ns: int, context: int) -> float:
    from turnout.protocol.modelfiles import read_gguf_kv  # late: only llama.cpp models need it

    def have_all(kv: dict[str, Any]) -> bool:
        arch = kv.get("general.architecture")
        return isinstance(arch, str) and all(f"{arch}.{k}" in kv for k in _ARCH_KEYS)

    try:
        kv = read_gguf_kv(Path(path), until=have_all)

        def field(name: str) -> int:
            v = kv.get(name)
            return int(v) if isinstance(v, int | float) else 0

        arch = str(kv.get("general.architecture") or "llama")
        ctx = context or field(f"{arch}.context_length")
        n_head = field(f"{arch}.attention.head_count")
        kv_mb = kv_cache_mb(ctx, field(f"{arch}.block_count"), field(f"{arch}.embedding_length"),
                            n_head, field(f"{arch}.attention.head_count_kv") or n_head)
    except Exception:  # a header we cannot read: the file size alone still helps
        kv_mb = 0.0
    return expected_footprint_mb(size, kv_mb)


# ------------------------------------------------------------------------ sampler


def sample_available() -> tuple[int, int]:
    """(available, total) bytes of the machine."""
    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)
