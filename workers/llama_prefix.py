"""The llama_cpp backend's KV states by content (see :mod:`workers.llama_cpp` and
:mod:`workers.kv_cache`): where a prompt stops being what other sessions share,
bringing the KV cache to the longest usable prefix of a prompt (the live cache, a
state in RAM, or a shared-prefix state from disk), and saving states at the points
other prompts will share. Mixed into :class:`workers.llama_cpp.LlamaBackend`, which
owns what is declared here."""

from __future__ import annotations

import ctypes
import json
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from turnout.protocol import prompt_prefix as pp
from turnout.protocol.chat import ChatRequest
from turnout.workers import chat_templates as ct
from turnout.workers import kv_cache as kv
from turnout.workers.models import cache_dir

if TYPE_CHECKING:
    from turnout.workers.llama_cpp import LlamaOptions

log = structlog.get_logger()


class PrefixStates:
    opts: LlamaOptions
    template: ct.TemplateInfo | None
    flash_attn: bool
    llm: Any
    _lc: Any
    cache: kv.StateCache
    recent: kv.RecentPrompts
    disk: kv.DiskStates | None
    _prefix_tokens: OrderedDict[str, np.ndarray]
    _n_swa: int

    if TYPE_CHECKING:
        def _render(self, req: ChatRequest, *, shaped: bool = False) -> ct.Rendered: ...
        def _tokenize(self, prompt: str) -> list[int]: ...

    def _disk_states(self, path: Path, n_ctx: int) -> kv.DiskStates:
        """Where this worker's shared-prefix states live on disk, and what a state
        must have been computed with to be loaded (see :class:`kv.DiskStates`)."""
        o, t = self.opts, self.template
        assert t is not None
        template = kv.prefix_hash(np.frombuffer(
            json.dumps([t.chat_format, t.family.name, t.source, t.bos_token, t.eos_token]).encode(), dtype=np.uint8))
        identity = {
            "model": kv.model_fingerprint(path),
            "build": kv.llama_build_id(),
            "template": template,
            "settings": f"n_ctx={n_ctx};n_ubatch={o.n_ubatch};swa_full={o.swa_full};flash_attn={self.flash_attn}",
        }
        root = Path(o.kv_dir).expanduser() if o.kv_dir else cache_dir() / "kv"
        return kv.DiskStates(root, identity, o.kv_disk_mb << 20, label=path.stem)

    def _shared_prefixes(self, plan: pp.PrefixPlan, tokens: np.ndarray) -> list[int]:
        """Where ``tokens`` stops being what other sessions share: the end of the
        tools, and of the stable system entries after them (ascending; only those
        at least ``prefix_min_tokens`` long). Found by rendering two probes that
        differ only after that point: right for any chat template."""
        out: list[int] = []
        for stable in (False, True) if plan.stable else (False,):
            a = self._render(plan.probe("\x01", stable=stable), shaped=True).prompt
            b = self._render(plan.probe("\x02", stable=stable), shaped=True).prompt
            text = a[: kv.common_prefix(np.frombuffer(a.encode("utf-32-le"), np.uint32),
                                        np.frombuffer(b.encode("utf-32-le"), np.uint32))]
            key = kv.prefix_hash(np.frombuffer(text.encode(), dtype=np.uint8))
            pt = self._prefix_tokens.get(key)
            if pt is None:
                pt = np.asarray(self._tokenize(text), dtype=np.intc)
                self._prefix_tokens[key] = pt
                while len(self._prefix_tokens) > 16:
                    self._prefix_tokens.popitem(last=False)
            else:
                self._prefix_tokens.move_to_end(key)
            # The text's last token may merge with what follows it: only what the
            # whole prompt tokenizes the same way counts.
            n = kv.common_prefix(pt, tokens)
            if n >= self.opts.prefix_min_tokens and n < len(tokens) - 1 and n not in out:
                out.append(n)
        return sorted(out)

    def _reuse(self, tokens: np.ndarray, shared: list[int] | None = None) -> tuple[int, str]:
        """Bring the KV cache to the longest usable prefix of ``tokens``: the live
        cache, a state in RAM, or a shared-prefix state from disk (``shared``: the
        lengths worth looking up there). Returns its length (0: start from scratch)
        and where it came from (live, ram, disk, none)."""
        llm, lc = self.llm, self._lc
        limit = len(tokens) - 1  # the last prompt token is always evaluated (logits)
        n_live = 0
        if llm.n_tokens:
            live = llm.input_ids[: min(llm.n_tokens, limit)]
            diff = np.flatnonzero(live != tokens[: len(live)])
            n_live = int(diff[0]) if diff.size else len(live)
            if n_live < llm.n_tokens and self._n_swa:
                # A sliding-window cache keeps only the last window of positions:
                # rewinding is valid only if it still holds the window before n_live
                # (the rule llama-server uses).
                mem = lc.llama_get_memory(llm.ctx)
                pos_min = lc.llama_memory_seq_pos_min(mem, 0)
                if pos_min > max(0, n_live - self._n_swa):
                    n_live = 0
        ck = self.cache.best(tokens, limit) if self.cache.capacity else None
        source = "ram"
        best = max(n_live, len(ck.tokens) if ck is not None else 0)
        if self.disk is not None:
            for n in sorted(shared or (), reverse=True):
                if n <= best or n > limit:
                    continue
                state = self.disk.load(tokens[:n])
                if state is not None:
                    log.info("kv_state_loaded", tokens=n, mb=round(state.size / 2**20, 1))
                    self.cache.put(state.tokens, state.data, state.size)
                    ck, source = state, "disk"
                    break
        if ck is not None and len(ck.tokens) > n_live:
            mem = lc.llama_get_memory(llm.ctx)
            lc.llama_memory_clear(mem, True)
            if lc.llama_state_seq_set_data(llm.ctx, ck.data, ck.size, 0) == ck.size:
                n = len(ck.tokens)
                llm.input_ids[:n] = ck.tokens
                llm.n_tokens = n
                return n, source
            log.warning("checkpoint_restore_failed", tokens=len(ck.tokens), source=source)
            lc.llama_memory_clear(mem, True)
            llm.n_tokens = 0
            return 0, "none"
        if n_live == 0:
            if llm.n_tokens:
                lc.llama_memory_clear(lc.llama_get_memory(llm.ctx), True)
                llm.n_tokens = 0
            return 0, "none"
        if n_live < llm.n_tokens:
            if not llm._ctx.kv_cache_seq_rm(-1, n_live, -1):
                lc.llama_memory_clear(lc.llama_get_memory(llm.ctx), True)
                llm.n_tokens = 0
                return 0, "none"
            llm.n_tokens = n_live
        return n_live, "live"

    def _checkpoint(self, to_disk: bool = False) -> None:
        """Save the KV state of the tokens evaluated so far (in RAM; ``to_disk``: a
        shared prefix, also on disk)."""
        llm, lc = self.llm, self._lc
        n = llm.n_tokens
        tokens = llm.input_ids[:n]
        if n == 0:
            return
        want_disk = to_disk and self.disk is not None and not self.disk.has(tokens)
        if not want_disk and (not self.cache.capacity or self.cache.has(tokens)):
            return
        size = lc.llama_state_seq_get_size(llm.ctx, 0)
        if size > self.cache.capacity and not want_disk:
            return
        buf = (ctypes.c_uint8 * size)()
        written = int(lc.llama_state_seq_get_data(llm.ctx, buf, size, 0))
        if not written:
            return
        if self.cache.capacity:
            self.cache.put(tokens, buf, written)
        if want_disk and self.disk is not None:
            self.disk.save(tokens, buf, written)

    def _checkpoint_plan(self, tokens: np.ndarray, n_cached: int, shared: list[int]) -> set[int]:
        """Where this prefill saves states beyond the end of the prompt: the shared
        prefixes, and where it parts from a recent prompt (only past what was
        restored, and not already held)."""
        end = len(tokens) - 1
        stops = {n for n in shared if n_cached < n < end}
        lcp = self.recent.longest_common(tokens)
        if lcp < end and lcp >= self.opts.prefix_min_tokens and not self.cache.has(tokens[:lcp]):
            stops.add(lcp)
        if n_cached in stops or n_cached in shared:
            # The live cache was rewound to exactly such a point: save it now.
            self._checkpoint(to_disk=n_cached in shared)
        return {n for n in stops if n > n_cached}
