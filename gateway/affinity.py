"""Cache-aware choice of a worker when a model has several: send a request where its
longest prefix already is, unless that worker is much busier than the others.

The anchor is SGLang's cache-aware router (sgl-router): it keeps, per worker, an
approximate tree of the prompts it sent there and routes to the longest match
unless the load is imbalanced. turnout knows more about its requests, so:

* **Keys**, from the canonical request (no tokenizer needed): a *session* (the
  client's conversation id; Claude Code sends one), and a chain of prefix hashes:
  ``k0`` hashes what every session with these tools and stable system text shares
  (:func:`protocol.prompt_prefix.prefix_key`, the prefix workers keep states of),
  ``k1`` extends it with the first turn, and so on, so a conversation without a
  session id is still followed turn by turn.
* :class:`Affinity` remembers, for the last requests sent, which worker got each
  session and each key (bounded LRU maps; a worker that goes away is forgotten).
  Like SGLang's tree it is the gateway's view, not the worker's: a worker may have
  evicted a state since, which costs a prefill, never a wrong answer.
* :func:`choose` is the policy, a pure function of a snapshot: the worker holding
  the request's session, else the deepest prefix key (the least loaded of those
  holding it), unless it is *too busy*: more than ``balance_abs`` requests above the
  least-loaded worker and more than ``balance_rel`` times its load (SGLang's
  ``balance_abs_threshold`` / ``balance_rel_threshold``); then, and when nothing is
  held anywhere, the least-loaded worker.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import msgspec

from turnout.protocol import prompt_prefix as pp
from turnout.protocol.chat import ChatRequest

Reason = Literal["session", "prefix", "balance", "least_loaded"]


def prefix_keys(req: ChatRequest) -> list[str]:
    """``[k0, k1, ...]``: the shared prefix, then each turn of the conversation after
    it (in the cache-friendly order the workers render)."""
    shaped = pp.cache_friendly(req)
    keys = [pp.prefix_key(req)]
    h = hashlib.blake2b(keys[0].encode(), digest_size=16)
    enc = msgspec.msgpack.Encoder()
    for msg in shaped.messages:
        h.update(enc.encode(msg))
        keys.append(h.copy().hexdigest())
    return keys


@dataclass(frozen=True, slots=True)
class Candidate:
    """A worker that can take the request now, and its load (requests in flight)."""

    id: str
    load: int


@dataclass(frozen=True, slots=True)
class Choice:
    worker_id: str
    reason: Reason
    depth: int = 0  # prefix keys matched (0: none; session: the session's worker)
    held_by: str = ""  # the worker holding the prefix, when another one was chosen


def choose(cands: list[Candidate], session_worker: str, holders: list[set[str]],
           balance_abs: int = 1, balance_rel: float = 1.5) -> Choice | None:
    """Pick a worker (module docstring). ``holders[i]``: the workers holding prefix key
    ``i`` of the request; ``session_worker``: the one holding its session ("" none)."""
    if not cands:
        return None
    by_id = {c.id: c for c in cands}
    least = min(cands, key=lambda c: c.load)  # first of equals: a stable order

    def too_busy(c: Candidate) -> bool:
        return c.load - least.load > balance_abs and c.load > balance_rel * least.load

    if session_worker in by_id:
        c = by_id[session_worker]
        if not too_busy(c):
            return Choice(c.id, "session", len(holders))
        return Choice(least.id, "balance", 0, c.id)
    for depth in range(len(holders), 0, -1):
        held = [by_id[w] for w in holders[depth - 1] if w in by_id]
        if held:
            c = min(held, key=lambda c: (c.load, c.id))
            if not too_busy(c):
                return Choice(c.id, "prefix", depth)
            return Choice(least.id, "balance", 0, c.id)
    return Choice(least.id, "least_loaded")


class Affinity:
    """Which worker got each session and prefix key lately (bounded LRU maps)."""

    def __init__(self, max_sessions: int = 4096, max_keys: int = 65536) -> None:
        self.max_sessions = max_sessions
        self.max_keys = max_keys
        self.sessions: OrderedDict[str, str] = OrderedDict()
        self.keys: OrderedDict[str, set[str]] = OrderedDict()

    def holders(self, keys: list[str]) -> list[set[str]]:
        return [set(self.keys.get(k, ())) for k in keys]

    def session_worker(self, session_id: str) -> str:
        return self.sessions.get(session_id, "") if session_id else ""

    def record(self, worker_id: str, session_id: str, keys: list[str]) -> None:
        """``worker_id`` got a request: it now holds its session and its prefixes (a
        session that moved is now only on the new worker; prefixes are shared)."""
        if session_id:
            self.sessions[session_id] = worker_id
            self.sessions.move_to_end(session_id)
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        for k in keys:
            held = self.keys.get(k)
            if held is None:
                self.keys[k] = {worker_id}
            else:
                held.add(worker_id)
                self.keys.move_to_end(k)
        while len(self.keys) > self.max_keys:
            self.keys.popitem(last=False)

    def forget_worker(self, worker_id: str) -> None:
        for s in [s for s, w in self.sessions.items() if w == worker_id]:
            del self.sessions[s]
        for k in [k for k, held in self.keys.items() if worker_id in held]:
            self.keys[k].discard(worker_id)
            if not self.keys[k]:
                del self.keys[k]
