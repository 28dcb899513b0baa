"""Requests from the gateway to its workers: which worker takes a request, and the
stream each request's messages arrive on.

* :class:`WorkerRef`: a registered worker as the gateway sees it (load, routing
  counts, readiness).
* :class:`RequestStream` / :class:`JobStream`: one request's messages in order
  (a media job's with its binary frames).
* :class:`Dispatch`, the part of :class:`gateway.bus.Bus` that opens requests: picks
  the worker (least loaded, or cache-aware: :mod:`gateway.affinity`), waits for one
  (``worker_wait_s``, then 529), or asks the supervisor to load a model that has no
  worker and sends the request once it is ready, pinging the client meanwhile.
  The sockets, the drains and cancellation are the bus's own (:mod:`gateway.bus`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import zmq

from turnout.gateway import affinity as aff
from turnout.gateway.errors import ApiError
from turnout.gateway.history import without_opaque
from turnout.gateway.metrics import LOCAL, SERVED, Metrics
from turnout.gateway.streams import MessageQueue
from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest
from turnout.protocol.config import Config, ModelConfig

log = structlog.get_logger()


@dataclass
class WorkerRef:
    id: str
    ident: bytes
    pid: int
    models: set[str]
    max_concurrency: int
    ready: bool = False
    in_flight: set[str] = field(default_factory=set)
    context_window: int = 0
    draining: bool = False  # the supervisor is stopping it: no new requests
    last_used: float = field(default_factory=time.monotonic)
    # Routing (gateway.affinity): requests sent here by reason, and what their
    # answers reported: prompt tokens, and those read from the worker's KV cache.
    routed: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    cache_read_tokens: int = 0
    registered_at: float = field(default_factory=time.monotonic)
    unlisted: int = 0  # supervisor tables in a row that did not hold it (reconcile)


class _Route:
    """What the cache-aware choice needs of a chat request; its prefix keys are
    computed only when a model has several workers to choose from."""

    __slots__ = ("_keys", "cache_aware", "req", "rid", "session_id")

    def __init__(self, rid: str, req: ChatRequest, cache_aware: bool) -> None:
        self.rid = rid
        self.req = req
        self.session_id = req.session_id
        self.cache_aware = cache_aware
        self._keys: list[str] | None = None

    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = aff.prefix_keys(self.req)
        return self._keys


class RequestStream:
    """The messages of one request, in order, as the worker sends them."""

    __slots__ = (
        "bus",
        "cancel_handle",
        "done",
        "expected_seq",
        "model",
        "queue",
        "rid",
        "seq_at_check",
        "t_cancel_ns",
        "t_open",
        "worker_id",
    )

    def __init__(self, bus: Dispatch, rid: str, worker_id: str, model: str) -> None:
        self.bus = bus
        self.rid = rid
        self.worker_id = worker_id
        self.model = model
        self.queue = MessageQueue()
        self.expected_seq = 0
        self.done = False  # a terminal message has been received
        self.t_cancel_ns = 0
        self.cancel_handle: asyncio.TimerHandle | None = None
        self.seq_at_check = 0  # expected_seq when the cancel deadline was last armed
        self.t_open = time.perf_counter()  # for the queue-wait metric

    def push(self, msg: m.StreamMsg) -> None:
        self.queue.push(msg)

    def cancel(self) -> None:
        self.bus.cancel(self)

    async def next_batch(self) -> list[m.StreamMsg]:
        """Every message received since the last call (at least one)."""
        return await self.queue.next_batch()


class JobStream(RequestStream):
    """A media job's stream: as :class:`RequestStream`, plus the binary frames that
    came with each ``JobOutput`` (zero-copy ``zmq.Frame`` objects, by ``seq``)."""

    __slots__ = ("data",)

    def __init__(self, bus: Dispatch, rid: str, worker_id: str, model: str) -> None:
        super().__init__(bus, rid, worker_id, model)
        self.data: dict[int, list[zmq.Frame]] = {}

    def frames(self, msg: m.JobOutput) -> list[zmq.Frame]:
        """The binary frames of ``msg`` (once: they are released after)."""
        return self.data.pop(msg.seq, [])


class Dispatch:
    """Opening requests; mixed into :class:`gateway.bus.Bus`, which owns what is
    declared here."""

    config: Config
    gateway_id: str
    workers: dict[str, WorkerRef]
    streams: dict[str, RequestStream]
    model_failed: dict[str, str]
    affinity: aff.Affinity
    metrics: Metrics | None
    router: zmq.Socket
    _enc: msgspec.msgpack.Encoder
    _ids: itertools.count[int]
    _rid_prefix: str
    _loads: dict[str, asyncio.Future[m.FromSupervisor]]
    _worker_changed: asyncio.Event | None

    if TYPE_CHECKING:
        def _terminate(self, st: RequestStream, msg: m.StreamMsg) -> None: ...
        def _drain_router(self) -> None: ...
        def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None: ...
        async def command(self, cmd: m.Command, timeout: float = 5.0) -> m.FromSupervisor: ...
        def cancel(self, st: RequestStream) -> None: ...

    def ready_workers(self, model: str) -> list[WorkerRef]:
        return [w for w in self.workers.values() if w.ready and not w.draining and model in w.models]

    def _pick(self, model: str, route: _Route | None = None) -> WorkerRef | None:
        """The worker for a request of ``model``: the least-loaded one that can queue
        it, or with ``route`` (a chat request) the cache-aware choice among them."""
        limit_extra = self.config.server.max_queue_per_worker
        usable = [w for w in self.workers.values()
                  if w.ready and not w.draining and model in w.models
                  and len(w.in_flight) < w.max_concurrency + limit_extra]
        if not usable:
            return None
        if route is None or len(usable) == 1:
            return min(usable, key=lambda w: len(w.in_flight))
        sc = self.config.server
        cands = [aff.Candidate(w.id, len(w.in_flight)) for w in usable]
        keys = route.keys() if route.cache_aware else []
        session = self.affinity.session_worker(route.session_id) if route.cache_aware else ""
        choice = aff.choose(cands, session, self.affinity.holders(keys), sc.balance_abs, sc.balance_rel)
        assert choice is not None
        w = self.workers[choice.worker_id]
        w.routed[choice.reason] = w.routed.get(choice.reason, 0) + 1
        if route.cache_aware:
            self.affinity.record(w.id, route.session_id, keys)
        log.info("worker_routed", request_id=route.rid, model=model, worker=w.id, reason=choice.reason,
                 depth=choice.depth, held_by=choice.held_by or None, loads={c.id: c.load for c in cands})
        return w

    def _new_rid(self) -> str:
        return f"{self._rid_prefix}{next(self._ids)}"

    async def _ready_worker(self, mc: ModelConfig, route: _Route | None = None) -> WorkerRef:
        """A ready worker of ``mc`` (see :meth:`_pick`), waiting up to ``worker_wait_s``
        for one (a restarting worker, say); then 529 with Retry-After."""
        deadline = time.monotonic() + self.config.server.worker_wait_s
        while (w := self._pick(mc.name, route)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                busy = bool(self.ready_workers(mc.name))
                raise ApiError(529, f"model {mc.name!r} is {'at capacity' if busy else 'not ready: no worker is up'}; retry shortly", retry_after=1)
            assert self._worker_changed is not None
            try:
                await asyncio.wait_for(self._worker_changed.wait(), timeout=min(left, 0.25))
            except TimeoutError:
                pass
        return w

    def _encode(self, msg: m.ToWorker) -> bytes:
        try:
            return self._enc.encode(msg)
        except OverflowError:
            # msgpack has 64-bit integers; JSON has any size (a tool schema's "maximum",
            # a seed): a permanent error of the request, found before it is sent.
            raise ApiError(400, "the request holds an integer beyond 64 bits, which a local model cannot "
                                "take") from None

    def _dispatch(self, w: WorkerRef, st: RequestStream, raw: bytes, data: list[bytes | memoryview]) -> None:
        """Track ``st`` as in flight on ``w`` and send ``raw`` (an encoded message;
        media input as extra frames, not copied)."""
        st.worker_id = w.id
        if self.metrics is not None:
            self.metrics.waited(st.model, time.perf_counter() - st.t_open)
        self.streams[st.rid] = st
        w.in_flight.add(st.rid)
        w.last_used = time.monotonic()
        try:
            self.router.send_multipart([w.ident, raw, *data], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as e:
            # EHOSTUNREACH (ROUTER_MANDATORY): the worker has gone since it said ready.
            w.ready = False
            self._terminate(st, m.Failed(st.rid, 0, "worker_died", f"worker unreachable: {e.strerror}"))
        asyncio.get_running_loop().call_soon(self._drain_router)  # sends can eat the edge

    async def open(self, mc: ModelConfig, req: ChatRequest, *, count: bool = False) -> RequestStream:
        """Send a request to the least-loaded ready worker of ``mc`` and return its
        stream. Waits up to ``worker_wait_s`` for a worker (one restarting, say),
        then raises 529 with Retry-After. A model with no worker at all is loaded
        on demand (see the module docstring)."""
        rid = self._new_rid()
        SERVED.set((mc.name, LOCAL))  # the metrics' labels for this request (gateway/metrics.py)
        req = without_opaque(req)  # a cloud provider's blocks mean nothing to a local model
        msg: m.ToWorker = (m.CountTokens if count else m.Generate)(rid, self.gateway_id, req)
        raw = self._encode(msg)
        st = RequestStream(self, rid, "", mc.name)
        route = None if count else _Route(rid, req, self.config.server.worker_routing == "cache_aware")
        if await self._needs_load(mc):
            self._spawn_task(self._send_when_loaded(mc, st, raw, [], route))
        else:
            self._dispatch(await self._ready_worker(mc, route), st, raw, [])
        return st

    async def open_job(self, mc: ModelConfig, params: m.JobParams, data: list[bytes | memoryview]) -> JobStream:
        """Send a media job (``data``: its input, as extra frames, not copied) to the
        least-loaded ready worker of ``mc``; waits for one as :meth:`open` does."""
        rid = self._new_rid()
        SERVED.set((mc.name, LOCAL))
        job = m.Job(rid, self.gateway_id, params, n_frames=len(data))
        raw = self._encode(job)
        jst = JobStream(self, rid, "", mc.name)
        if await self._needs_load(mc):
            self._spawn_task(self._send_when_loaded(mc, jst, raw, data))
        else:
            self._dispatch(await self._ready_worker(mc), jst, raw, data)
        return jst

    # ------------------------------------------------------------ load on demand

    async def _needs_load(self, mc: ModelConfig) -> bool:
        """True when ``mc`` has no worker at all (not even one starting) and loads on
        demand, once the supervisor has agreed to load it; raises 529 with
        Retry-After when it refuses (memory), 503 for a parked model."""
        if not mc.loads_on_demand():
            return False
        if any(mc.name in w.models and not w.draining for w in self.workers.values()):
            return False
        fut = self._loads.get(mc.name)
        if fut is None:
            # One LoadModel per model, however many requests wait, in a task of its
            # own: a waiter whose client goes away does not cancel it for the others.
            fut = asyncio.ensure_future(self._load_command(mc.name))
            self._loads[mc.name] = fut
            fut.add_done_callback(lambda _f: self._loads.pop(mc.name, None))
        reply = await asyncio.shield(fut)
        if isinstance(reply, m.LoadRefused):
            if reply.retry_after_s > 0:
                raise ApiError(529, reply.message, retry_after=reply.retry_after_s)
            raise ApiError(503, reply.message)
        if isinstance(reply, m.ErrorReply):
            raise ApiError(503, f"cannot load model {mc.name!r}: {reply.message}")
        return True

    async def _load_command(self, model: str) -> m.FromSupervisor:
        try:
            return await self.command(m.LoadModel(model))
        except TimeoutError:
            return m.ErrorReply("the supervisor did not answer")

    async def _send_when_loaded(self, mc: ModelConfig, st: RequestStream, raw: bytes,
                                data: list[bytes | memoryview], route: _Route | None = None) -> None:
        """Wait for a ready worker of a model being loaded, pinging the client every
        ``ping_interval_s``, then send it the request (or end the stream with an
        error: the model failed to load, or did not load in ``load_timeout_s``)."""
        sc = self.config.supervisor
        t0 = time.monotonic()
        deadline = t0 + max(self.config.server.worker_wait_s, sc.load_timeout_s)
        next_ping = t0 + sc.ping_interval_s
        log.info("waiting_for_model_load", model=mc.name)
        while True:
            if st.t_cancel_ns:  # the client went away while it loaded
                st.done = True
                return
            w = self._pick(mc.name, route)
            if w is not None:
                break
            now = time.monotonic()
            failed = self.model_failed.get(mc.name)
            if failed or now >= deadline:
                why = f"failed to load: {failed}" if failed else f"did not load within {deadline - t0:.0f} s"
                self._terminate(st, m.Failed(st.rid, 0, "overloaded", f"model {mc.name!r} {why}"))
                return
            if now >= next_ping:
                st.push(m.Ping(st.rid, 0))
                next_ping = now + sc.ping_interval_s
            assert self._worker_changed is not None
            try:
                await asyncio.wait_for(self._worker_changed.wait(),
                                       timeout=max(0.01, min(deadline, next_ping) - now))
            except TimeoutError:
                pass
        log.info("model_loaded_for_request", model=mc.name, waited_s=round(time.monotonic() - t0, 3))
        self._dispatch(w, st, raw, data)
