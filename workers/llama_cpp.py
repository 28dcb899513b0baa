"""The ``llama_cpp`` backend: one GGUF model in this worker process, via llama-cpp-python.

Roles:

* :class:`LlamaBackend` loads the model with its context size pinned (``n_ctx``
  fixed at load, so no request forces a reload), renders requests with
  :mod:`workers.chat_templates`, and streams tokens through the parsers of
  :mod:`workers.tool_calls`.
* KV states by content (:mod:`workers.kv_cache`): the prompt is put in a
  cache-friendly order first (:mod:`protocol.prompt_prefix`: Claude Code's billing
  header dropped, the volatile system sections after the tools), then the prefill
  saves the state at the points other prompts will share: where sessions part (the
  end of the tools, and of the stable system entries after them: found by rendering
  two probes of the request that differ only after that point), where this prompt
  parts from a recent one, every ``checkpoint_every`` tokens on a sliding-window
  model, and at the end of the prompt. States live in RAM (LRU, bounded in bytes);
  the shared-prefix ones are also written to disk, so a restarted or new worker
  starts warm. A request restores the longest state that prefixes it (the live KV
  cache first when it can be rewound), from RAM, else from disk.

Prefill runs in ``n_batch`` chunks: between chunks the generator yields ``Ping``
(the compute loop cannot send while we block) and checks for a cancel; inside a
chunk an abort callback (``llama_set_abort_callback``) stops llama.cpp within a
graph node when the request is cancelled, and sends heartbeats. Decoding checks the
cancel flag before every token.

Options (``[models.options]``, validated by :class:`LlamaOptions`): see its fields.
"""

from __future__ import annotations

import json
import os

# OpenMP reads this once, when llama.cpp's library loads: spinning threads collapse
# decode speed 5-8x when another process wants the same cores (MEASURED.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import codecs
import ctypes
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator
from typing import Any

import msgspec
import numpy as np
import structlog

from turnout.protocol import messages as m
from turnout.protocol import prompt_prefix as pp
from turnout.protocol.chat import ChatRequest, Usage
from turnout.workers import chat_templates as ct
from turnout.workers import kv_cache as kv
from turnout.workers import tool_calls as tc
from turnout.workers.base import BackendError, GenContext, GenItem, ModelLoadError, WorkerSpec
from turnout.workers.formats.grammar import call_grammar
from turnout.workers.llama_prefix import PrefixStates
from turnout.workers.models import N_CTX_MAX, ModelError, gguf_info, planned_n_ctx, resolve
from turnout.workers.signing import install_signer

log = structlog.get_logger()

HEARTBEAT_EVERY_S = 0.25  # from the abort callback, during prefill
_KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}  # ggml type ids


class LlamaOptions(ct.ChatOptions, forbid_unknown_fields=True, kw_only=True):
    """llama.cpp knobs for one model.

    ``n_ctx``: context size (0: the worker's ``context_window``, else the GGUF's
    training context capped at ``n_ctx_max``). ``n_threads``/``n_threads_batch``:
    decode/prefill threads (0: all cores). ``swa_full``: keep a full-size KV cache
    for sliding-window layers (Gemma 3): lets the live cache rewind anywhere, at ~2x
    the RSS; without it, saved states (:mod:`workers.kv_cache`) give the same reuse.
    ``flash_attn``: llama.cpp's flash attention; unset, on, and off for a model
    that does not load with it (on the CPU it prefills Claude Code's prompt with
    the default model 1.4x as fast at 8k tokens: 123 against 87 tok/s).
    ``cache_capacity_mb``: bytes of prompt checkpoints kept in RAM (0 disables).
    ``checkpoint_every``: also checkpoint long prefills every N tokens (SWA models
    only), so conversations that share a long prefix reuse it.
    ``kv_disk_mb``: total size of the shared-prefix states kept on disk, for all
    models (0: none saved or loaded); ``kv_dir``: where (empty: ``kv/`` in the cache
    directory, ``$TURNOUT_CACHE_DIR`` or ``~/.cache/turnout``).
    ``prefix_min_tokens``: shared prefixes shorter than this are not saved.
    The chat and sampling options are :class:`workers.chat_templates.ChatOptions`."""

    n_ctx: int = 0
    n_ctx_max: int = N_CTX_MAX
    n_threads: int = 0
    n_threads_batch: int = 0
    n_batch: int = 512
    n_ubatch: int = 512
    swa_full: bool = False
    flash_attn: bool | None = None
    type_k: str = "f16"  # KV cache element types: f16, q8_0, q4_0 (quantised V needs flash_attn)
    type_v: str = "f16"
    use_mlock: bool = False
    cache_capacity_mb: int = 1024
    checkpoint_every: int = 4096
    kv_disk_mb: int = 4096
    kv_dir: str = ""
    prefix_min_tokens: int = 256


# ---------------------------------------------------------------- backend


class LlamaBackend(PrefixStates):
    """See the module docstring. One request at a time (``max_concurrency = 1``):
    llama.cpp's single KV sequence is the conversation being generated."""

    def __init__(self, spec: WorkerSpec) -> None:
        try:
            self.opts = msgspec.convert(spec.options, LlamaOptions)
        except msgspec.ValidationError as e:
            raise ModelLoadError(f"llama_cpp options: {e}") from None
        self.spec = spec
        self.models = [spec.model]
        self.max_concurrency = 1
        self.context_window = 0  # known after load()
        self.llm: Any = None
        self.template: ct.TemplateInfo | None = None
        self.cache = kv.StateCache(self.opts.cache_capacity_mb << 20)
        self.recent = kv.RecentPrompts()
        self.disk: kv.DiskStates | None = None
        self._prefix_tokens: OrderedDict[str, np.ndarray] = OrderedDict()  # shared-prefix text -> tokens
        self._n_swa = 0
        self._add_bos = True
        self._timing = (0.0, 0.0, 0)  # the running request's start, end of prefill, cached tokens
        self.base_model = False  # no chat template in the GGUF (known after load())
        self.flash_attn = False  # in use (known after load())
        self._extra_stops: list[str] = []  # end-of-turn strings beyond the template's
        self._bos_text = ""
        self._piece_buf = ctypes.create_string_buffer(256)
        self._abort_cb: Any = None
        self._abort_ctx: GenContext | None = None
        self._last_hb = 0.0
        self._main = threading.get_ident()
        self._signer = install_signer()

    # -- load

    def load(self) -> None:
        o = self.opts
        try:
            path = resolve(self.spec.path)
            info = gguf_info(path)
        except ModelError as e:
            raise ModelLoadError(str(e)) from None
        for name, t in (("type_k", o.type_k), ("type_v", o.type_v)):
            if t not in _KV_TYPES:
                raise ModelLoadError(f"llama_cpp options: {name} must be one of {', '.join(_KV_TYPES)}")
        n_ctx = planned_n_ctx(info.context_length, o.n_ctx, self.spec.context_window, o.n_ctx_max)
        if n_ctx < (o.n_ctx or self.spec.context_window):
            log.warning("n_ctx_capped", asked=o.n_ctx or self.spec.context_window, trained=info.context_length)
        threads = os.cpu_count() or 1
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise ModelLoadError(f"llama-cpp-python is not installed: {e} (pip install llama-cpp-python==0.3.36)") from None
        t0 = time.monotonic()
        self.flash_attn = True if o.flash_attn is None else o.flash_attn
        while True:
            try:
                self.llm = Llama(
                    str(path),
                    n_ctx=n_ctx,
                    n_batch=o.n_batch,
                    n_ubatch=o.n_ubatch,
                    n_threads=o.n_threads or threads,
                    n_threads_batch=o.n_threads_batch or threads,
                    logits_all=False,  # logits only for the last token: halves prefill
                    swa_full=o.swa_full,
                    flash_attn=self.flash_attn,
                    type_k=_KV_TYPES[o.type_k],
                    type_v=_KV_TYPES[o.type_v],
                    use_mlock=o.use_mlock,
                    verbose=False,
                )
                break
            except (ValueError, RuntimeError, OSError) as e:
                if o.flash_attn is None and self.flash_attn:
                    log.warning("flash_attn_off", reason=str(e)[:200])
                    self.flash_attn = False  # the default, not the user's choice: try without
                    continue
                raise ModelLoadError(f"cannot load {path}: {e}") from None
        import llama_cpp as lc

        self._lc = lc
        self.context_window = self.llm.n_ctx()
        self._n_swa = 0 if o.swa_full else int(lc.llama_model_n_swa(self.llm.model))
        vocab = lc.llama_model_get_vocab(self.llm.model)
        self._vocab = vocab
        self._add_bos = bool(lc.llama_vocab_get_add_bos(vocab))
        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        self._bos_text = self._piece(bos) if bos >= 0 else ""
        eos_text = self._piece(eos) if eos >= 0 else ""
        self._stop_ids = set(info.stop_token_ids)
        try:
            self.template = ct.detect(
                info.chat_template,
                info.architecture,
                bos_token=self._bos_text,
                eos_token=eos_text,
                chat_format=o.chat_format,
                tool_format=o.tool_format,
                tool_detail=o.tool_detail,
            )
        except ValueError as e:
            raise ModelLoadError(f"llama_cpp options: {e}") from None
        self.base_model = not info.chat_template
        self._extra_stops = ct.extra_stops(o.stop, self.template.chat_format, self.base_model)
        # Kept referenced: llama.cpp holds a raw pointer to it. Installed only while a
        # prefill runs (see _prefill): it is called once per graph node, which would
        # cost a few percent of decode speed for nothing.
        self._abort_cb = lc.ggml_abort_callback(self._on_abort_poll)
        self._no_abort_cb = lc.ggml_abort_callback()  # NULL
        if o.kv_disk_mb > 0:
            self.disk = self._disk_states(path, n_ctx)
        log.info(
            "model_loaded",
            path=str(path),
            n_ctx=self.context_window,
            chat_format=self.template.chat_format,
            tool_format=self.template.family.name,
            base_model=self.base_model,
            flash_attn=self.flash_attn,
            stops=self._extra_stops,
            load_s=round(time.monotonic() - t0, 2),
        )

    # -- tokens

    def _piece(self, token: int) -> str:
        return self._piece_bytes(token).decode("utf-8", "replace")

    def _piece_bytes(self, token: int) -> bytes:
        buf = self._piece_buf
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        if n < 0:  # a piece longer than the buffer (rare): grow and retry
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def _tokenize(self, prompt: str) -> list[int]:
        # A template that writes the BOS text itself must not get a second BOS.
        add_bos = self._add_bos and not (self._bos_text and prompt.startswith(self._bos_text))
        return list(self.llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True))

    def _render(self, req: ChatRequest, *, shaped: bool = False) -> ct.Rendered:
        """``req`` rendered, in the cache-friendly order (``shaped``: it already is)."""
        assert self.template is not None, "load() first"
        try:
            return ct.render(req if shaped else pp.cache_friendly(req), self.template)
        except ct.TemplateError as e:
            raise BackendError("invalid_request", f"the model's chat template refused the conversation: {e}") from None

    def count_tokens(self, req: ChatRequest) -> int:
        return len(self._tokenize(self._render(req).prompt))

    # -- abort callback (called by llama.cpp from the thread running llama_decode)

    def _on_abort_poll(self, _data: Any) -> bool:
        ctx = self._abort_ctx
        if ctx is None:
            return False
        now = time.monotonic()
        if now - self._last_hb >= HEARTBEAT_EVERY_S and threading.get_ident() == self._main:
            self._last_hb = now
            ctx.heartbeat()  # the compute loop's own heartbeat, from its own thread
        return ctx.cancelled()

    # -- KV cache

    # -- generate

    def generate(self, request_id: str, req: ChatRequest, ctx: GenContext) -> Iterator[GenItem]:
        t_start = time.monotonic()
        plan = pp.plan(req)
        rendered = self._render(plan.request, shaped=True)
        tokens = np.asarray(self._tokenize(rendered.prompt), dtype=np.intc)
        n_prompt = len(tokens)
        max_prompt = self.context_window - 1  # room for at least one output token
        if n_prompt > max_prompt:
            raise BackendError("context_overflow", f"prompt is too long: {n_prompt} tokens > {max_prompt} maximum")
        grammar, forced = self._grammar(req, rendered)
        json_only = False
        if grammar is None and req.response_format is not None and not rendered.tools_enabled:
            grammar, json_only = self._json_grammar(req), True
        shared = self._shared_prefixes(plan, tokens)
        n_cached, source = self._reuse(tokens, shared)
        stops = self._checkpoint_plan(tokens, n_cached, shared)
        self.recent.add(tokens)
        log.info("prompt_cache", request_id=request_id, prompt_tokens=n_prompt, cached=n_cached, source=source,
                 shared=shared, checkpoints=sorted(stops))
        # Anthropic usage: input_tokens excludes what was read from the cache.
        usage = Usage(input_tokens=n_prompt - n_cached, cache_read_input_tokens=n_cached)
        yield m.Started(request_id, 0, input_tokens=usage.input_tokens, cache_read_input_tokens=n_cached)

        # ---- prefill, in chunks, cancellable inside a chunk
        done = yield from self._prefill(request_id, tokens, ctx, stops, set(shared))
        if not done:
            yield m.Done(request_id, 0, "cancelled", usage)
            return

        # ---- decode
        self._timing = (t_start, time.monotonic(), n_cached)  # for the generation log line
        sampler = self._sampler(req, grammar)
        try:
            yield from self._decode(request_id, req, rendered, sampler, forced, n_prompt, usage, ctx, json_only)
        finally:
            sampler.close()

    def _prefill(self, request_id: str, tokens: np.ndarray, ctx: GenContext, stops: set[int] | None = None,
                 to_disk: set[int] | None = None) -> Generator[GenItem, None, bool]:
        """Evaluate the prompt tokens not in the cache, saving states at ``stops``
        (those in ``to_disk`` on disk too), at the end and every ``checkpoint_every``
        tokens. Returns False if cancelled."""
        llm = self.llm
        n_batch = llm.n_batch
        end = len(tokens) - 1  # checkpoint before the last token, then evaluate it
        every = self.opts.checkpoint_every if self._n_swa else 0
        stops = {n for n in (stops or ()) if 0 < n < end}
        to_disk = to_disk or set()
        self._abort_ctx = ctx
        self._lc.llama_set_abort_callback(llm.ctx, self._abort_cb, None)
        try:
            while llm.n_tokens < len(tokens):
                if ctx.cancelled():
                    return False
                start = llm.n_tokens
                stop = min(start + n_batch, end) if start < end else len(tokens)
                if every and start // every != stop // every and stop < end:
                    stop = (stop // every) * every  # land on a checkpoint boundary
                stop = min([stop, *(n for n in stops if start < n < stop)])  # and on a shared prefix
                try:
                    llm.eval(tokens[start:stop].tolist())
                except RuntimeError:
                    # llama_decode aborted (cancel) or failed: drop the partial batch
                    llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
                    if ctx.cancelled():
                        return False
                    raise
                n = llm.n_tokens
                if n == end or n in stops or (every and n % every == 0 and n < end):
                    self._checkpoint(to_disk=n in to_disk)
                if llm.n_tokens < len(tokens):
                    yield m.Ping(request_id, 0)
        finally:
            self._lc.llama_set_abort_callback(llm.ctx, self._no_abort_cb, None)
            self._abort_ctx = None
        return True

    def _grammar(self, req: ChatRequest, rendered: ct.Rendered) -> tuple[Any, bool]:
        """A forced call's grammar, in the model's own format (see
        :mod:`workers.formats.grammar`)."""
        choice = tc.effective_choice(req, self.opts.force_tool)
        if not rendered.tools_enabled or choice is None or choice.type not in ("any", "tool"):
            return None, False
        name = choice.name if choice.type == "tool" else ""
        from llama_cpp import LlamaGrammar

        try:
            text = call_grammar(rendered.family, req.tools, name, max_string=self.opts.forced_string_max_chars)
        except ValueError as e:
            raise BackendError("invalid_request", f"tool_choice: {e}") from None
        try:
            return LlamaGrammar.from_string(text, verbose=False), True
        except Exception as e:  # a schema llama.cpp's converter cannot express
            log.warning("tool_grammar_failed", error=repr(e))
            return None, False

    def _json_grammar(self, req: ChatRequest) -> Any:
        """The grammar of a structured-output answer: any JSON object, or one of the
        request's schema."""
        from llama_cpp import LlamaGrammar

        rf = req.response_format
        assert rf is not None
        # {"type": "object"} for json_object: the converter bounds whitespace, so a
        # finished object cannot trail blanks up to max_tokens.
        schema = rf.schema if rf.type == "json_schema" and rf.schema else {"type": "object"}
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as e:  # a schema llama.cpp's converter cannot express: say so, do not ignore it
            raise BackendError("invalid_request", f"response_format: llama.cpp cannot constrain output to this schema: {e}") from None

    def _sampler(self, req: ChatRequest, grammar: Any) -> Any:
        from llama_cpp._internals import LlamaSampler

        o = self.opts
        temp = o.temperature if req.temperature is None else req.temperature
        top_p = o.top_p if req.top_p is None else req.top_p
        top_k = o.top_k if req.top_k is None else req.top_k
        seed = o.seed if o.seed >= 0 else self._lc.LLAMA_DEFAULT_SEED
        s = LlamaSampler()
        if o.repeat_penalty != 1.0:
            s.add_penalties(self.llm.n_vocab(), 64, o.repeat_penalty, 0.0, 0.0)
        if grammar is not None:
            s.add_grammar(self.llm._model, grammar)
        if temp <= 0:
            s.add_greedy()
        else:
            s.add_top_k(top_k if top_k > 0 else self.llm.n_vocab())
            s.add_top_p(top_p, 1)
            s.add_min_p(o.min_p, 1)
            s.add_temp(temp)
            s.add_dist(seed)
        return s

    def _decode(
        self,
        request_id: str,
        req: ChatRequest,
        rendered: ct.Rendered,
        sampler: Any,
        forced: bool,
        n_prompt: int,
        usage: Usage,
        ctx: GenContext,
        json_only: bool = False,
    ) -> Iterator[GenItem]:
        llm, lc = self.llm, self._lc
        # The answer ends at max_tokens, or where the context window is full: then
        # as Anthropic's API ends it, with model_context_window_exceeded.
        room = self.context_window - n_prompt
        budget = min(req.max_tokens, room)
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        # A grammar-forced call is one JSON object, whitespace and newlines included:
        # end-of-turn strings must not cut it (the grammar ends it).
        # So is a structured-output answer.
        turn_stops = not (forced or json_only)
        out = tc.AnswerWriter(request_id, req, rendered, stops=self._extra_stops, forced=forced,
                              turn_stops=turn_stops, sign=self._signer.sign)
        # A blank end-of-turn string (a base model's "\n") ends a turn once it has
        # begun: blank text before the answer is dropped, not taken as its end.
        blank_lead = turn_stops and any(st and not st.strip() for st in [*rendered.stop, *self._extra_stops])
        stop_reason: Any = "max_tokens"
        n_out = 0
        while n_out < budget:
            if ctx.cancelled():
                stop_reason = "cancelled"
                break
            # A tool call is buffered until complete, so tokens may pass with nothing
            # to yield: the heartbeat must not depend on output (rate-limited, cheap).
            ctx.heartbeat()
            token = sampler.sample(llm._ctx, -1)
            n_out += 1
            if lc.llama_vocab_is_eog(self._vocab, token) or token in self._stop_ids:
                stop_reason = "end_turn"
                break
            text = utf8.decode(self._piece_bytes(token))
            if blank_lead:
                text = text.lstrip()
                blank_lead = not text
            msgs = out.feed(text) if text else None
            if msgs:
                yield from msgs
            if out.stop_reason is not None:
                stop_reason = out.stop_reason
                break
            if n_out >= budget:
                break  # the last token needs no evaluation (nor a KV cell)
            llm.eval([token])  # feed it back: the next token's logits
        if stop_reason == "max_tokens" and n_out >= room and req.max_tokens > room:
            stop_reason = "model_context_window_exceeded"
        # What was held back as a possible stop string's start never became one.
        yield from out.finish(utf8.decode(b"", final=True))
        usage.output_tokens = n_out
        done = out.done(stop_reason, usage)
        t_start, t_prefilled, n_cached = self._timing
        t_end = time.monotonic()
        log.info("generation", request_id=request_id, prompt_tokens=n_prompt, cached_tokens=n_cached,
                 prefill_s=round(t_prefilled - t_start, 3),
                 prefill_tps=round((n_prompt - n_cached) / max(t_prefilled - t_start, 1e-9), 1),
                 output_tokens=n_out, decode_tps=round(n_out / max(t_end - t_prefilled, 1e-9), 1),
                 stop_reason=done.stop_reason)
        yield done


def create(spec: WorkerSpec) -> LlamaBackend:
    return LlamaBackend(spec)
