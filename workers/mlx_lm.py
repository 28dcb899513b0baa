"""The ``mlx_lm`` backend: one MLX model directory in this worker process, via mlx-lm.

The same contract as :mod:`workers.llama_cpp` (streamed text, stop strings,
``max_tokens``, cancel between tokens, ``count_tokens`` with the model's tokenizer,
tool calls, thinking, prompt-cache reuse), on Apple's MLX: Metal on a Mac,
``mlx[cpu]`` on Linux.

Roles:

* :class:`MlxBackend` loads a **local** model directory (``config.json``,
  ``*.safetensors``, tokenizer files: what ``mlx_lm.convert`` writes) with
  ``mlx_lm.load``; it never downloads (a path that does not exist is an error, not
  a Hugging Face repo id). It renders requests with :mod:`workers.chat_templates`
  using the tokenizer's own chat template (its family's template when the tokenizer
  has none), and streams what the model writes through
  :class:`workers.tool_calls.AnswerWriter`, like the llama.cpp backend.
* :class:`KVStore` reuses KV caches (``mlx_lm.models.cache.make_prompt_cache``):
  the live cache is rewound (``trim_prompt_cache``) to the longest prefix it shares
  with the next prompt, and the caches of a few other conversations are kept (LRU,
  bounded in bytes), so that Claude Code's ~19k-token prefix is evaluated once.

Generation is turnout's own loop over the model (not ``mlx_lm.stream_generate``),
so that prefill runs in ``prefill_step`` chunks with a ``Ping`` and a cancel check
between chunks (MLX has no abort callback: a cancel waits for the chunk in flight,
at most ``prefill_step`` tokens), and decoding checks the cancel flag before every
token. Like ``mlx_lm.generate_step`` it evaluates the next token asynchronously
while the current one is detokenised and sent.

Tool calls: MLX has no grammar sampler, so a forced ``tool_choice`` is honoured by
writing the start of the call (``{"name": "<tool>", "arguments": `` or Hermes'
``<tool_call>``) into the prompt; what the model writes after it is parsed as usual,
and a call that does not come out as valid JSON is returned as text, never as a
broken ``tool_use`` block.

Options (``[models.options]``, validated by :class:`MlxOptions`): see its fields.
"""

from __future__ import annotations

import os
import sys

# The CPU backend JIT-compiles fused kernels with the system compiler on first use:
# 6-20 s before the first token on Linux (MEASURED.md). Metal does not pay that.
if sys.platform == "linux":
    os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import structlog

from turnout.protocol import messages as m
from turnout.protocol import prompt_prefix as pp
from turnout.protocol.chat import ChatRequest, Usage
from turnout.workers import chat_templates as ct
from turnout.workers import tool_calls as tc
from turnout.workers.base import (
    BackendError,
    GenContext,
    GenItem,
    ModelLoadError,
    WorkerSpec,
    missing_extra,
)
from turnout.workers.formats.grammar import forced_prefix
from turnout.workers.signing import install_signer

log = structlog.get_logger()


class MlxOptions(ct.ChatOptions, forbid_unknown_fields=True, kw_only=True):
    """MLX knobs for one model.

    ``n_ctx``: the context window advertised and enforced (0: the worker's
    ``context_window``, else the model's ``max_position_embeddings`` capped at
    ``n_ctx_max``); MLX caches grow as needed, so it costs no memory up front.
    ``prefill_step``: prompt tokens per forward pass while prefilling (a cancel is
    seen between steps). ``cache_entries``/``cache_capacity_mb``: KV caches of other
    conversations kept (0 entries: only the live cache is reused).
    ``stash_min_tokens``: before rewinding the live cache by more than this many
    tokens, keep a copy of it (another conversation that shares a prefix is
    starting; the first one may come back). The chat and sampling options are
    :class:`workers.chat_templates.ChatOptions`."""

    n_ctx: int = 0
    n_ctx_max: int = 32768
    prefill_step: int = 512
    cache_entries: int = 4
    cache_capacity_mb: int = 2048
    stash_min_tokens: int = 256


# ---------------------------------------------------------------- KV caches


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@dataclass(slots=True)
class _Entry:
    tokens: np.ndarray  # the tokens whose keys and values the cache holds
    cache: list[Any]
    nbytes: int


class KVStore:
    """The live KV cache and an LRU of other conversations' caches.

    :meth:`take` hands out the cache to use for a prompt and how many of its tokens
    it already holds; the generator then appends every token it feeds the model
    to :attr:`live_tokens`, so the store always knows what the live cache holds."""

    def __init__(self, make: Any, entries: int, capacity_bytes: int, stash_min_tokens: int) -> None:
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        self._make = make  # () -> a fresh cache (make_prompt_cache(model))
        self._can_trim = can_trim_prompt_cache
        self._trim = trim_prompt_cache
        self.max_entries = entries
        self.capacity = capacity_bytes
        self.stash_min_tokens = stash_min_tokens
        self.live: list[Any] = make()
        self.live_tokens: list[int] = []
        self._lru: list[_Entry] = []  # oldest first

    @staticmethod
    def _nbytes(cache: list[Any]) -> int:
        try:
            return int(sum(c.nbytes for c in cache))
        except (NotImplementedError, AttributeError):
            return 0

    def _usable(self, held: int, shared: int, cache: list[Any]) -> int:
        """How much of a cache holding ``held`` tokens serves a prompt it shares
        ``shared`` tokens with: all of them if it can be rewound, else only if
        nothing needs rewinding."""
        if shared == held or (shared and self._can_trim(cache)):
            return shared
        return 0

    def _stash(self, tokens: list[int], cache: list[Any]) -> None:
        if not self.max_entries or not tokens:
            return
        size = self._nbytes(cache)
        if size > self.capacity:
            return
        self._lru.append(_Entry(np.asarray(tokens, dtype=np.int64), cache, size))
        while len(self._lru) > self.max_entries or sum(e.nbytes for e in self._lru) > self.capacity:
            self._lru.pop(0)

    def take(self, tokens: np.ndarray) -> int:
        """Make :attr:`live` the best cache for ``tokens``; return how many prompt
        tokens it holds (at most ``len(tokens) - 1``: the last prompt token is
        always evaluated, for its logits)."""
        limit = len(tokens) - 1
        live = np.asarray(self.live_tokens, dtype=np.int64)
        n_live = self._usable(len(live), min(_common_prefix(live, tokens), limit), self.live)
        best_i, n_best = -1, 0
        for i, e in enumerate(self._lru):
            n = self._usable(len(e.tokens), min(_common_prefix(e.tokens, tokens), limit), e.cache)
            if n > n_best:
                best_i, n_best = i, n
        if best_i >= 0 and n_best > n_live:
            # Switch to a stored conversation; the live one is stored in its place.
            e = self._lru.pop(best_i)
            self._stash(self.live_tokens, self.live)
            self.live, self.live_tokens = e.cache, e.tokens.tolist()
            n_live = n_best
        elif n_live == 0:
            self._stash(self.live_tokens, self.live)
            self.live, self.live_tokens = self._make(), []
            return 0
        elif len(self.live_tokens) - n_live > self.stash_min_tokens and self.max_entries:
            # A new conversation shares a prefix with the live one: keep a copy of
            # the live one whole, it may come back.
            self._stash(list(self.live_tokens), copy.deepcopy(self.live))
        extra = len(self.live_tokens) - n_live
        if extra:
            self._trim(self.live, extra)
            del self.live_tokens[n_live:]
        return n_live

    def reset(self) -> None:
        self.live, self.live_tokens = self._make(), []

    def __len__(self) -> int:
        return len(self._lru)


# ---------------------------------------------------------------- backend


class MlxBackend:
    """See the module docstring. One request at a time (``max_concurrency = 1``):
    the live KV cache is the conversation being generated."""

    def __init__(self, spec: WorkerSpec) -> None:
        try:
            self.opts = msgspec.convert(spec.options, MlxOptions)
        except msgspec.ValidationError as e:
            raise ModelLoadError(f"mlx_lm options: {e}") from None
        self.spec = spec
        self.models = [spec.model]
        self.max_concurrency = 1
        self.context_window = 0  # known after load()
        self.model: Any = None
        self.tokenizer: Any = None
        self.template: ct.TemplateInfo | None = None
        self._extra_stops: list[str] = []  # end-of-turn strings beyond the template's (after load())
        self.kv: KVStore | None = None
        self._eos: set[int] = set()
        self._signer = install_signer()

    # -- load

    def load(self) -> None:
        o = self.opts
        try:
            import mlx.core as mx
            import mlx_lm
            from mlx_lm.models.cache import make_prompt_cache
            from mlx_lm.sample_utils import make_logits_processors, make_sampler
        except ImportError as e:
            raise missing_extra("mlx_lm", e) from None
        if not self.spec.path:
            raise ModelLoadError("mlx_lm needs `path`: a local MLX model directory (mlx_lm.convert writes one)")
        path = Path(self.spec.path).expanduser()
        if not (path / "config.json").is_file():
            # mlx_lm.load would treat a missing path as a Hugging Face repo id and
            # download it: turnout never downloads implicitly.
            raise ModelLoadError(f"{path} is not an MLX model directory (no config.json); "
                                 "convert a model with `mlx_lm.convert --hf-path ORG/REPO --mlx-path DIR`")
        self._mx = mx
        self._make_sampler = make_sampler
        self._make_processors = make_logits_processors
        t0 = time.monotonic()
        try:
            model, tokenizer, config = mlx_lm.load(str(path), return_config=True)  # type: ignore[misc]
        except (ValueError, FileNotFoundError, OSError, KeyError) as e:
            raise ModelLoadError(f"cannot load {path}: {e}") from None
        self.model, self.tokenizer = model, tokenizer
        trained = int(config.get("max_position_embeddings") or (config.get("text_config") or {}).get(
            "max_position_embeddings") or 0)
        n_ctx = o.n_ctx or self.spec.context_window or min(trained or 4096, o.n_ctx_max)
        if trained and n_ctx > trained:
            log.warning("n_ctx_capped", asked=n_ctx, trained=trained)
            n_ctx = trained
        self.context_window = n_ctx
        self._eos = set(tokenizer.eos_token_ids)
        template = tokenizer.chat_template or ""
        if isinstance(template, dict | list):  # named templates: the default one
            named = template if isinstance(template, dict) else {t["name"]: t["template"] for t in template}
            template = named.get("default", "")
        self._bos = tokenizer.bos_token or ""
        try:
            self.template = ct.detect(
                str(template),
                str(config.get("model_type", "")),
                bos_token=self._bos,
                eos_token=tokenizer.eos_token or "",
                chat_format=o.chat_format,
                tool_format=o.tool_format,
                tool_detail=o.tool_detail,
            )
        except ValueError as e:
            raise ModelLoadError(f"mlx_lm options: {e}") from None
        self._extra_stops = ct.extra_stops(o.stop, self.template.chat_format, base_model=not template)
        self.kv = KVStore(lambda: make_prompt_cache(model), o.cache_entries, o.cache_capacity_mb << 20,
                          o.stash_min_tokens)
        # One token through the model: first-use costs (kernel setup, lazy weights)
        # are paid here, not by the first request.
        warm = make_prompt_cache(model)
        mx.eval(model(mx.array([[0]]), cache=warm))
        log.info("model_loaded", path=str(path), n_ctx=n_ctx, chat_format=self.template.chat_format,
                 tool_format=self.template.family.name, load_s=round(time.monotonic() - t0, 2))

    # -- tokens

    def _tokenize(self, prompt: str) -> list[int]:
        # A template that writes the BOS text itself must not get a second BOS.
        add_special = not (self._bos and prompt.startswith(self._bos))
        return list(self.tokenizer.encode(prompt, add_special_tokens=add_special))

    def _render(self, req: ChatRequest) -> ct.Rendered:
        assert self.template is not None, "load() first"
        try:
            # In the cache-friendly order (protocol/prompt_prefix.py): sessions
            # share the tools and stable system text, so the KV store reuses them.
            return ct.render(pp.cache_friendly(req), self.template)
        except ct.TemplateError as e:
            raise BackendError("invalid_request", f"the model's chat template refused the conversation: {e}") from None

    def count_tokens(self, req: ChatRequest) -> int:
        return len(self._tokenize(self._render(req).prompt))

    # -- generate

    def _forced_prefix(self, req: ChatRequest, rendered: ct.Rendered) -> tuple[str, bool]:
        """The start of a forced tool call, written into the prompt (no grammar here)."""
        choice = tc.effective_choice(req, self.opts.force_tool)
        if not rendered.tools_enabled or choice is None or choice.type not in ("any", "tool"):
            return "", False
        if choice.type == "tool":
            if not any(t.name == choice.name for t in req.tools):
                raise BackendError("invalid_request",
                                   f"tool_choice: tool_choice names {choice.name!r}, which is not among the tools")
            return forced_prefix(rendered.family, req.tools, choice.name), True
        return "", True

    def generate(self, request_id: str, req: ChatRequest, ctx: GenContext) -> Iterator[GenItem]:
        mx, kv = self._mx, self.kv
        assert kv is not None, "load() first"
        rendered = self._render(req)
        prefix, forced = self._forced_prefix(req, rendered)
        tokens = np.asarray(self._tokenize(rendered.prompt + prefix), dtype=np.int64)
        n_prompt = len(tokens)
        max_prompt = self.context_window - 1  # room for at least one output token
        if n_prompt > max_prompt:
            raise BackendError("context_overflow", f"prompt is too long: {n_prompt} tokens > {max_prompt} maximum")
        n_cached = kv.take(tokens)
        usage = Usage(input_tokens=n_prompt - n_cached, cache_read_input_tokens=n_cached)
        yield m.Started(request_id, 0, input_tokens=usage.input_tokens, cache_read_input_tokens=n_cached)

        # ---- prefill, in steps; a cancel is seen between steps
        step = max(1, self.opts.prefill_step)
        end = n_prompt - 1
        while len(kv.live_tokens) < end:
            if ctx.cancelled():
                yield m.Done(request_id, 0, "cancelled", usage)
                return
            start = len(kv.live_tokens)
            chunk = tokens[start : min(start + step, end)]
            self.model(mx.array(chunk)[None], cache=kv.live)
            mx.eval([c.state for c in kv.live])
            kv.live_tokens.extend(chunk.tolist())
            ctx.heartbeat()
            yield m.Ping(request_id, 0)
        if ctx.cancelled():
            yield m.Done(request_id, 0, "cancelled", usage)
            return

        # ---- decode
        o = self.opts
        if o.seed >= 0:
            mx.random.seed(o.seed)
        temp = o.temperature if req.temperature is None else req.temperature
        sampler = self._make_sampler(
            temp=max(temp, 0.0),
            top_p=(o.top_p if req.top_p is None else req.top_p) if temp > 0 else 0.0,
            min_p=o.min_p if temp > 0 else 0.0,
            top_k=max(o.top_k if req.top_k is None else req.top_k, 0) if temp > 0 else 0,
        )
        processors = self._make_processors(repetition_penalty=o.repeat_penalty) if o.repeat_penalty != 1.0 else []
        history = mx.array(tokens) if processors else None

        def step_one(token_ids: Any) -> Any:
            """Feed ``token_ids`` (1-D) to the model; the next token, lazily."""
            assert kv.live is not None
            logits = self.model(token_ids[None], cache=kv.live)[:, -1, :]
            if history is not None:
                for p in processors:
                    logits = p(history, logits)
            logprobs = logits - mx.logsumexp(logits, keepdims=True)
            return sampler(logprobs)

        y = step_one(mx.array(tokens[-1:]))
        kv.live_tokens.append(int(tokens[-1]))
        mx.async_eval(y)
        detok = self.tokenizer.detokenizer
        detok.reset()
        # A base model's end-of-turn strings do not apply to a forced call or a
        # structured-output answer (JSON may hold line breaks): as in llama_cpp,
        # where a grammar ends those; here the template's markers and the single
        # call do.
        json_answer = forced or req.response_format is not None
        extra = [] if json_answer else self._extra_stops
        turn_stops = [*rendered.stop, *extra]
        out = tc.AnswerWriter(request_id, req, rendered, stops=extra, forced=forced, sign=self._signer.sign)
        if prefix:
            yield from out.feed(prefix)  # the parser reads the call from its start
        room = self.context_window - n_prompt
        budget = min(req.max_tokens, room)
        blank_lead = any(st and not st.strip() for st in turn_stops)  # as in workers.llama_cpp
        stop_reason: Any = "max_tokens"
        n_out = 0
        while n_out < budget:
            if ctx.cancelled():
                stop_reason = "cancelled"
                break
            ctx.heartbeat()  # a buffered tool call yields nothing for many tokens
            token = int(y.item())
            n_out += 1
            if token in self._eos:
                stop_reason = "end_turn"
                break
            if n_out < budget and len(kv.live_tokens) < self.context_window:
                # Start the next forward pass before this token is detokenised and
                # sent: the model computes while Python writes.
                nxt = mx.array([token])
                if processors:
                    history = mx.concatenate([history, nxt])
                y = step_one(nxt)
                kv.live_tokens.append(token)
                mx.async_eval(y)
            detok.add_token(token)
            text = detok.last_segment
            if blank_lead:
                text = text.lstrip()
                blank_lead = not text
            if text:
                msgs = out.feed(text)
                if msgs:
                    yield from msgs
            if out.stop_reason is not None:
                stop_reason = out.stop_reason
                break
            if len(kv.live_tokens) >= self.context_window:
                break
        if stop_reason == "max_tokens" and n_out >= room and req.max_tokens > room:
            stop_reason = "model_context_window_exceeded"  # as Anthropic's API ends it
        detok.finalize()
        yield from out.finish(detok.last_segment)
        usage.output_tokens = n_out
        yield out.done(stop_reason, usage)


def create(spec: WorkerSpec) -> MlxBackend:
    return MlxBackend(spec)
