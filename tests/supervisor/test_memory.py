"""Memory policy: watermarks with hysteresis, eviction order, cooldown, admission,
footprints. Pure functions, no processes."""

from __future__ import annotations

import pytest

from turnout.supervisor import memory
from turnout.supervisor.memory import Watermarks, WorkerSnap

W = Watermarks(soft_mb=1000.0, hard_mb=500.0, hysteresis_mb=100.0, cooldown_s=5.0, headroom_mb=0.0)


def snap(id: str, priority: int = 0, rss: float = 100.0, in_flight: int = 0, last_used: float = 0.0,
         state: str = "ready", model: str = "m") -> WorkerSnap:
    return WorkerSnap(id=id, model=model, priority=priority, rss_mb=rss, in_flight=in_flight,
                      last_used=last_used, state=state)


def test_resolve_watermarks_defaults_from_total() -> None:
    w = memory.resolve_watermarks(32768.0, 0, 0, 256, 5)
    assert w.soft_mb == pytest.approx(3276.8) and w.hard_mb == pytest.approx(1638.4)
    small = memory.resolve_watermarks(4096.0, 0, 0, 256, 5)
    assert (small.soft_mb, small.hard_mb) == (1024.0, 512.0)


def test_hard_watermark_never_above_soft() -> None:
    w = memory.resolve_watermarks(8192.0, 500.0, 900.0, 0, 0)
    assert w.hard_mb == 500.0


@pytest.mark.parametrize(("prev", "avail", "level"), [
    ("none", 2000, "none"),
    ("none", 999, "soft"),
    ("none", 499, "hard"),
    ("soft", 1050, "soft"),  # within the hysteresis band: stays
    ("soft", 1100, "none"),  # hysteresis_mb above the mark: leaves
    ("hard", 550, "hard"),  # above hard but within its band
    ("hard", 600, "soft"),  # out of hard, still under soft
    ("hard", 1099, "soft"),
    ("hard", 1100, "none"),
    ("none", 1050, "none"),  # the band does not make a level start early
])
def test_levels_with_hysteresis(prev: memory.Level, avail: float, level: str) -> None:
    assert memory.next_level(prev, avail, W) == level


def test_no_flapping_around_the_soft_mark() -> None:
    level: memory.Level = "none"
    seen = []
    for avail in [1010, 990, 1010, 995, 1020, 1090, 1101, 1010]:
        level = memory.next_level(level, avail, W)
        seen.append(level)
    assert seen == ["none", "soft", "soft", "soft", "soft", "soft", "none", "none"]


def test_eviction_order_lowest_priority_then_lru() -> None:
    ws = [
        snap("hi-old", priority=5, last_used=1.0),
        snap("lo-new", priority=0, last_used=9.0),
        snap("lo-old", priority=0, last_used=2.0),
        snap("busy", priority=-1, in_flight=1),
        snap("loading", priority=-1, state="loading"),
    ]
    assert [w.id for w in memory.eviction_order(ws)] == ["lo-old", "lo-new", "hi-old"]


def test_busy_victim_lowest_priority_then_largest() -> None:
    ws = [
        snap("a", priority=1, rss=5000, in_flight=1),
        snap("b", priority=0, rss=300, in_flight=4),
        snap("c", priority=0, rss=900, in_flight=2),
        snap("idle", priority=0, rss=9999),
    ]
    v = memory.busy_victim(ws)
    assert v is not None and v.id == "c"
    assert memory.busy_victim([snap("idle")]) is None


def test_plan_soft_evicts_idle_only() -> None:
    ws = [snap("busy", in_flight=1, rss=4000), snap("idle", priority=3)]
    e = memory.plan_eviction("soft", ws, now=100.0, last_eviction=0.0, w=W)
    assert e is not None and e.worker_id == "idle" and not e.drain
    assert memory.plan_eviction("soft", [snap("busy", in_flight=1)], 100.0, 0.0, W) is None


def test_plan_hard_drains_a_busy_worker_when_no_idle_is_left() -> None:
    e = memory.plan_eviction("hard", [snap("busy", in_flight=1, rss=4000)], 100.0, 0.0, W)
    assert e is not None and e.worker_id == "busy" and e.drain and "hard" in e.reason


def test_plan_respects_the_cooldown() -> None:
    assert memory.plan_eviction("hard", [snap("idle")], now=104.0, last_eviction=100.0, w=W) is None
    assert memory.plan_eviction("hard", [snap("idle")], now=105.0, last_eviction=100.0, w=W) is not None


def test_plan_does_nothing_without_pressure() -> None:
    assert memory.plan_eviction("none", [snap("idle")], 100.0, 0.0, W) is None


def test_admit_when_it_fits() -> None:
    assert memory.admit(500.0, 0, 2000.0, "none", [], W).decision == "admit"


def test_admit_counts_headroom() -> None:
    w = Watermarks(soft_mb=1000.0, hard_mb=500.0, headroom_mb=600.0)
    assert memory.admit(500.0, 0, 2000.0, "none", [], w).decision == "refuse"


def test_admit_evicts_idle_lower_priority_first() -> None:
    ws = [snap("lo", priority=0, rss=400, last_used=5.0), snap("lo2", priority=0, rss=400, last_used=1.0),
          snap("busy", priority=0, rss=3000, in_flight=1)]
    a = memory.admit(1000.0, 1, 1500.0, "none", ws, W)  # needs 500 MiB more
    assert a.decision == "evict" and a.evict == ("lo2", "lo")


def test_admit_never_evicts_higher_priority_or_busy() -> None:
    ws = [snap("hi", priority=9, rss=5000), snap("busy", priority=0, rss=5000, in_flight=2)]
    a = memory.admit(1000.0, 1, 1500.0, "none", ws, W)
    assert a.decision == "refuse" and "needs about 1000 MiB" in a.reason


def test_admit_refuses_under_pressure() -> None:
    a = memory.admit(1.0, 0, 900.0, "soft", [snap("idle", rss=5000)], W)
    assert a.decision == "refuse" and "soft" in a.reason


def test_kv_cache_and_footprint() -> None:
    # 32 layers, 4096 wide, GQA 32/8 heads, f16: 128 KiB per token -> 4096 tokens = 512 MiB
    assert memory.kv_cache_mb(4096, 32, 4096, 32, 8) == pytest.approx(512.0)
    assert memory.kv_cache_mb(0, 32, 4096, 32, 8) == 0.0
    assert memory.expected_footprint_mb(1024 * 1024 * 1024, 512.0, overhead_mb=100.0) == pytest.approx(1636.0)


def test_gguf_footprint_of_a_missing_file_is_zero() -> None:
    assert memory.gguf_footprint_mb("/nonexistent/model.gguf", 4096) == 0.0


def test_gguf_footprint_reads_the_header(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.workers.tiny_gguf import N_EMBD, N_LAYER, write_tiny_gguf

    p = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=2048)
    size_mb = p.stat().st_size / (1024 * 1024)
    kv = memory.kv_cache_mb(8192, N_LAYER, N_EMBD, 4, 4)
    assert kv > 0
    assert memory.gguf_footprint_mb(str(p), 8192) == pytest.approx(size_mb + kv + 150.0, rel=1e-6)
    # no context given: the model's own context length
    assert memory.gguf_footprint_mb(str(p), 0) == pytest.approx(size_mb + kv / 4 + 150.0, rel=1e-6)


def test_gguf_footprint_reads_no_further_than_it_needs_and_only_once(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The supervisor asks on every status request and admission, on its main loop:
    # a whole-vocabulary parse there (19 s for the default model with gguf.GGUFReader)
    # held up SIGTERM and /healthz.
    import turnout.protocol.modelfiles
    from tests.workers.tiny_gguf import write_tiny_gguf

    p = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=2048)
    seen: list[dict[str, object]] = []
    real = turnout.protocol.modelfiles.read_gguf_kv

    def spy(path, until=None):  # type: ignore[no-untyped-def]
        kv = real(path, until)
        seen.append(kv)
        return kv

    monkeypatch.setattr(turnout.protocol.modelfiles, "read_gguf_kv", spy)
    first = memory.gguf_footprint_mb(str(p), 4096)
    assert memory.gguf_footprint_mb(str(p), 4096) == first > 0
    assert len(seen) == 1  # remembered
    assert "llama.attention.head_count_kv" in seen[0]
    assert not any(k.startswith("tokenizer.") for k in seen[0])  # the vocabulary was not read
    # a rewritten file is read again
    write_tiny_gguf(p, context_length=4096, seed=1)
    memory.gguf_footprint_mb(str(p), 4096)
    assert len(seen) == 2
