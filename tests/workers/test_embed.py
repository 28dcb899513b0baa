"""The embed backend in-process: padding does not change a vector, long texts are
truncated at the model's 256 tokens, jobs cancel between batches, and a missing
model directory is a load error that says what is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import StubCtx

from turnout.protocol import messages as m
from turnout.workers.base import BackendError, ModelLoadError, WithFrames, WorkerSpec
from turnout.workers.embed import EmbedBackend, create


def backend(path: str = "", **options: object) -> EmbedBackend:
    b = create(WorkerSpec(id="e", backend="embed", model="minilm", runtime_dir="/tmp", gateway_ids=[], path=path,
                          options=dict(options)))
    b.load()
    return b


@pytest.fixture(scope="module")
def minilm() -> EmbedBackend:
    return backend(batch_size=2)


def vectors(b: EmbedBackend, texts: list[str], ctx: StubCtx | None = None) -> tuple[np.ndarray, list[object]]:
    out = list(b.run_job("r", m.Job("r", "g", m.EmbedParams(texts=texts)), [], ctx or StubCtx()))
    got = [x for x in out if isinstance(x, WithFrames)]
    v = np.frombuffer(got[0].frames[0], dtype="<f4").reshape(len(texts), -1) if got else np.empty(0)
    return v, out


def test_padding_and_batching_change_nothing(minilm: EmbedBackend) -> None:
    texts = ["short", "a much longer sentence with many more word pieces in it", "mid length text"]
    together, out = vectors(minilm, texts)  # two batches, padded to their longest
    alone = np.vstack([vectors(minilm, [x])[0] for x in texts])
    assert np.abs(together - alone).max() < 1e-5
    done = out[-1]
    assert isinstance(done, m.Done) and done.usage.input_tokens == sum(len(x) for x in minilm.enc.tokenize(texts))  # type: ignore[union-attr]


def test_long_text_is_truncated_at_the_models_window(minilm: EmbedBackend) -> None:
    long = " ".join(["word"] * 1000)
    v, out = vectors(minilm, [long, long + " and more after the cut"])
    assert np.abs(v[0] - v[1]).max() < 1e-6  # the tail past 256 tokens is not seen
    assert out[-1].usage.input_tokens == 2 * 256  # type: ignore[attr-defined]


def test_cancel_between_batches(minilm: EmbedBackend) -> None:
    ctx = StubCtx(cancel_after_heartbeats=1)
    _, out = vectors(minilm, ["one", "two", "three", "four"], ctx)
    assert isinstance(out[-1], m.Done) and out[-1].stop_reason == "cancelled"
    assert not any(isinstance(x, WithFrames) for x in out)


def test_empty_job_and_missing_model(minilm: EmbedBackend, tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        vectors(minilm, [])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        backend(str(tmp_path))
