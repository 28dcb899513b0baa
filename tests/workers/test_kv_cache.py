"""KV states by content: the RAM LRU, recent prompts and the disk store, without a model."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from turnout.workers import kv_cache as kv

IDENTITY = {"model": "m1", "build": "b1", "template": "t1", "settings": "s1"}


def toks(*xs: int) -> np.ndarray:
    return np.asarray(xs, dtype=np.intc)


def blob(size: int, fill: int = 7) -> ctypes.Array[ctypes.c_uint8]:
    buf = (ctypes.c_uint8 * size)()
    ctypes.memset(buf, fill, size)
    return buf


def test_longest_prefix_wins_and_the_last_token_is_left() -> None:
    c = kv.StateCache(1000)
    c.put(toks(1, 2), blob(10), 10)
    c.put(toks(1, 2, 3, 4), blob(10), 10)
    c.put(toks(9, 9, 9), blob(10), 10)
    got = c.best(toks(1, 2, 3, 4, 5), limit=4)
    assert got is not None and got.tokens.tolist() == [1, 2, 3, 4]
    got = c.best(toks(1, 2, 3, 4), limit=3)  # a whole-prompt state would leave nothing to evaluate
    assert got is not None and got.tokens.tolist() == [1, 2]
    assert c.best(toks(5, 6, 7), limit=2) is None


def test_least_recently_used_goes_first_within_the_byte_budget() -> None:
    c = kv.StateCache(30)
    c.put(toks(1), blob(10), 10)
    c.put(toks(2), blob(10), 10)
    c.put(toks(3), blob(10), 10)
    assert c.best(toks(1, 0), limit=1) is not None  # used: now the most recent
    c.put(toks(4), blob(10), 10)
    assert c.has(toks(1)) and not c.has(toks(2)) and c.has(toks(3)) and c.has(toks(4))
    assert c.used == 30 and len(c) == 3
    assert c.put(toks(5), blob(31), 31) is None  # larger than the whole budget: not kept
    assert len(c) == 3


def test_recent_prompts_give_the_longest_common_prefix() -> None:
    r = kv.RecentPrompts(keep=2)
    assert r.longest_common(toks(1, 2, 3)) == 0
    r.add(toks(1, 2, 3, 4))
    r.add(toks(1, 2, 9))
    assert r.longest_common(toks(1, 2, 3, 7)) == 3
    r.add(toks(5))
    assert r.longest_common(toks(1, 2, 3, 7)) == 2  # the oldest was dropped


def store(root: Path, capacity: int = 1 << 20, **identity: str) -> kv.DiskStates:
    return kv.DiskStates(root, {**IDENTITY, **identity}, capacity, label="tiny.gguf")


def test_disk_round_trip(tmp_path: Path) -> None:
    d = store(tmp_path)
    t = toks(*range(50))
    fut = d.save(t, blob(4096, 3), 4000)
    assert fut is not None
    fut.result(5)
    assert d.save(t, blob(4096, 3), 4000) is None  # once per prefix
    files = list(tmp_path.glob("*/*.kvstate"))
    assert len(files) == 1 and files[0].parent.name.startswith("tiny.gguf-")
    got = store(tmp_path).load(t)  # another worker, same model
    assert got is not None and got.size == 4000 and got.tokens.tolist() == t.tolist()
    assert bytes(got.data) == b"\x03" * 4000
    assert store(tmp_path).load(toks(*range(49))) is None  # only that exact prefix


@pytest.mark.parametrize("field", ["build", "model"])
def test_a_state_from_another_build_or_model_is_discarded(tmp_path: Path, field: str) -> None:
    t = toks(*range(50))
    old = store(tmp_path)
    fut = old.save(t, blob(100), 100)
    assert fut is not None
    fut.result(5)
    path = old.path_for(t)
    other = store(tmp_path, **{field: "other"})
    if field == "model":  # another model file has its own directory; a copied file is caught by its header
        other.dir.mkdir(parents=True)
        target = other.path_for(t)
        target.write_bytes(path.read_bytes())
        path = target
    assert other.load(t) is None
    assert not path.exists() and other.discarded == 1


def test_a_damaged_state_is_discarded(tmp_path: Path) -> None:
    d = store(tmp_path)
    t = toks(*range(20))
    fut = d.save(t, blob(1000), 1000)
    assert fut is not None
    fut.result(5)
    path = d.path_for(t)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert d.load(t) is None and not path.exists()
    path.write_bytes(b"TKVS")  # short
    assert d.load(t) is None and not path.exists()


def test_the_disk_store_keeps_its_size_cap(tmp_path: Path) -> None:
    import os
    import time

    d = store(tmp_path)
    paths = []
    for i in range(3):
        t = toks(i, i, i)
        fut = d.save(t, blob(1000), 1000)
        assert fut is not None
        fut.result(5)
        paths.append(d.path_for(t))
        os.utime(paths[-1], (time.time() - 100 + i, time.time() - 100 + i))
    size = paths[0].stat().st_size
    d.capacity = int(3.5 * size)  # room for three files, not four
    d.load(toks(0, 0, 0))  # used: now the most recent
    fut = d.save(toks(7, 7, 7), blob(1000), 1000)
    assert fut is not None
    fut.result(5)
    left = {p.name for p in tmp_path.glob("*/*.kvstate")}
    assert paths[0].name in left and d.path_for(toks(7, 7, 7)).name in left
    assert len(left) == 3 and paths[1].name not in left  # the least recently used went
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_nothing_is_saved_without_a_disk_budget(tmp_path: Path) -> None:
    d = store(tmp_path, capacity=0)
    assert d.save(toks(1, 2), blob(10), 10) is None
    assert d.load(toks(1, 2)) is None
    assert not list(tmp_path.glob("**/*.kvstate"))


def test_model_fingerprint_sees_content_not_name(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    data = bytes(range(256)) * 20000
    a.write_bytes(data)
    b.write_bytes(data)
    c.write_bytes(data[:-1] + b"\x00")
    assert kv.model_fingerprint(a) == kv.model_fingerprint(b) != kv.model_fingerprint(c)


def test_build_id_changes_with_the_library(tmp_path: Path) -> None:
    lib = tmp_path / "libllama.so"
    lib.write_bytes(b"one")
    first = kv.build_id([lib], "0.3.36", 2)
    assert kv.build_id([lib], "0.3.37", 2) != first
    lib.write_bytes(b"two")
    assert kv.build_id([lib], "0.3.36", 2) != first
    assert kv.llama_build_id() == kv.llama_build_id()
