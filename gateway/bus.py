"""The gateway's side of the ZeroMQ bus.

Sockets (all owned by the event loop's thread, read through ``loop.add_reader`` on
the ZeroMQ file descriptors, which are edge-triggered: every reader drains until
``EAGAIN``):

* ROUTER, bound: workers connect their DEALER; ``Generate``/``Cancel`` go out,
  ``Hello``/``Ready`` come in.
* SUB, bound, subscribed once to this gateway's id: every token of every stream.
* DEALER to the supervisor's bus ROUTER: hello, ready, commands. Each command
  carries a fresh ``call_id`` and is answered by the reply carrying the same one;
  a reply no command waits for (it timed out) is dropped (issue 15).
* SUB to the supervisor's event PUB: worker state changes (a worker that exited
  fails the requests it held; a draining one gets no new request but finishes what
  it holds).

Supervisor duties (issue 4): a ``GatewayReport`` about once a second (each worker's
in-flight count, whether it is routed to, how long it has been idle: the
supervisor's LRU, keep-alive and drain decisions rest on it), sent at once when a
draining worker has emptied. A request for a model with no worker at all asks the
supervisor to load one (``LoadModel``): a refusal is 529 with Retry-After, else the
request waits for the worker, with ``Ping`` messages to the client meanwhile.

Streams are checked for ``seq`` gaps: a gap fails the request, never splices.
Frames for request ids the gateway no longer tracks are dropped and counted.

Worker choice (issue 13): among a model's ready workers, a chat request goes where
its session or longest prefix already is (:mod:`gateway.affinity`, within a load
imbalance bound), else to the least-loaded one; ``[server] worker_routing =
"least_loaded"`` turns the cache-aware part off. Each worker's routing counts and
the prompt tokens its answers read from cache are kept for ``/admin/workers``.

Who may be a worker (issue 14): the ROUTER and the SUB are PLAIN servers; this
process's ZAP handler admits only connections that present the instance's bus
secret (protocol/sockets.py), so a process that is not one of turnout's workers
can neither register, take over a worker's identity, nor publish into a stream. A
Hello must also come from the pid it names, where the kernel tells (SO_PEERCRED).
A registered worker the supervisor does not list (by id and pid) in its answers
to commands sent after it registered is forgotten (:meth:`Bus.reconcile`): one
that left, or was killed, is no longer routed to or counted by /healthz, even if
no event said so. The report loop asks for that list every ``RECONCILE_EVERY``
reports.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psutil
import structlog
import zmq

from gateway import affinity as aff
from gateway.errors import ApiError
from gateway.history import without_opaque
from gateway.streams import MessageQueue
from protocol import messages as m
from protocol.chat import ChatRequest
from protocol.config import Config, ModelConfig
from protocol.paths import peer_credentials
from protocol.sockets import (
    Endpoints,
    ZapHandler,
    bind,
    join_bus,
    make_socket,
    serve_bus,
    unlink_ipc,
)

log = structlog.get_logger()

REPORT_INTERVAL_S = 1.0
# Stream messages taken off the SUB socket per turn of the event loop: a worker that
# streams faster than the gateway reads must not keep the loop from everything else
# (/healthz, other streams, a client's disconnect). The rest waits for the next turn.
DRAIN_BATCH = 256
# Messages of one local stream received but not yet taken by its handler: one whose
# client does not read (its handler waits on a full socket) stops growing here, and
# its generation is stopped. A model at 100 tokens/s fills it in under three minutes.
MAX_UNREAD = 16_384
RECONCILE_EVERY = 5  # reports: a ListWorkers to the supervisor every 5 s


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
        "worker_id",
    )

    def __init__(self, bus: Bus, rid: str, worker_id: str, model: str) -> None:
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

    def __init__(self, bus: Bus, rid: str, worker_id: str, model: str) -> None:
        super().__init__(bus, rid, worker_id, model)
        self.data: dict[int, list[zmq.Frame]] = {}

    def frames(self, msg: m.JobOutput) -> list[zmq.Frame]:
        """The binary frames of ``msg`` (once: they are released after)."""
        return self.data.pop(msg.seq, [])


class Bus:
    """Options:
    gateway_id: this gateway's id; the stream subscription topic.
    endpoints: where the sockets live.
    config: worker wait time, cancel deadline, queue bound.
    secret: the instance's bus secret (the gateway's spec); needed by :meth:`start`.
    """

    def __init__(self, gateway_id: str, endpoints: Endpoints, config: Config, secret: str = "") -> None:
        self.gateway_id = gateway_id
        self.endpoints = endpoints
        self.config = config
        self._secret = secret
        self.ctx = zmq.Context()
        self.workers: dict[str, WorkerRef] = {}
        self.streams: dict[str, RequestStream] = {}
        self.dropped_frames = 0
        self._ids = itertools.count(1)
        self._rid_prefix = f"{os.getpid():x}-{int(time.time()):x}-"
        self._enc = msgspec.msgpack.Encoder()
        self._dec_stream = msgspec.msgpack.Decoder(m.StreamMsg)
        self._dec_hello = msgspec.msgpack.Decoder(m.Hello | m.Ready)
        self._dec_sup = msgspec.msgpack.Decoder(m.FromSupervisor)
        self._dec_event = msgspec.msgpack.Decoder(m.Event)
        self._worker_changed: asyncio.Event | None = None
        # Commands waiting for their reply, by call_id: (the reply's future, when sent).
        self._calls: dict[int, tuple[asyncio.Future[m.FromSupervisor], float]] = {}
        self._call_ids = itertools.count(1)
        self.on_cancel_done: Callable[[RequestStream, m.Done], None] | None = None
        self.model_failed: dict[str, str] = {}  # parked models (supervisor events)
        self._loads: dict[str, asyncio.Future[m.FromSupervisor]] = {}  # one LoadModel per model
        self._tasks: set[asyncio.Task[None]] = set()
        self.affinity = aff.Affinity()

    # ---------------------------------------------------------------- set-up

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._worker_changed = asyncio.Event()
        # Before anything binds: every connection is authenticated from the first.
        self.zap = ZapHandler(self.ctx, self._secret)
        self.zap.start()
        self.router = make_socket(self.ctx, zmq.ROUTER)
        # A restarted worker reuses its id (only workers with the secret get here).
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        serve_bus(self.router)
        bind(self.router, self.endpoints.gateway_requests(self.gateway_id))
        self.sub = make_socket(self.ctx, zmq.SUB)
        serve_bus(self.sub)
        bind(self.sub, self.endpoints.gateway_streams(self.gateway_id))
        self.sub.setsockopt(zmq.SUBSCRIBE, self.gateway_id.encode())  # once, never per request
        self.sup = make_socket(self.ctx, zmq.DEALER, identity=self.gateway_id.encode())
        join_bus(self.sup, self.gateway_id, self._secret)
        self.sup.connect(self.endpoints.bus)
        self.events = make_socket(self.ctx, zmq.SUB)
        self.events.connect(self.endpoints.events)
        self.events.setsockopt(zmq.SUBSCRIBE, m.EVENTS_TOPIC)
        for sock, fn in ((self.router, self._drain_router), (self.sub, self._drain_streams),
                         (self.sup, self._drain_sup), (self.events, self._drain_events)):
            loop.add_reader(int(sock.getsockopt(zmq.FD)), fn)
            loop.call_soon(fn)  # edge-triggered: pick up anything already queued
        self._send_sup(m.Hello(role="gateway", id=self.gateway_id, pid=os.getpid()))
        self._spawn_task(self._report_loop())

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a strong reference, or the task may be collected
        task.add_done_callback(self._tasks.discard)

    async def _report_loop(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            self.report()
            n += 1
            if n % RECONCILE_EVERY == 0 and self.workers:
                try:  # the reply reconciles (_drain_sup)
                    await self.command(m.ListWorkers(), timeout=2.0)
                except TimeoutError:
                    pass

    def report(self) -> None:
        """Tell the supervisor what the gateway holds on each worker."""
        now = time.monotonic()
        loads = [m.WorkerLoad(w.id, len(w.in_flight), w.ready and not w.draining,
                              0.0 if w.in_flight else round(now - w.last_used, 3))
                 for w in self.workers.values()]
        try:
            self._send_sup(m.GatewayReport(self.gateway_id, loads))
        except zmq.ZMQError:
            pass  # closing

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for task in list(self._tasks):
            task.cancel()
        for sock in (self.router, self.sub, self.sup, self.events):
            try:
                loop.remove_reader(int(sock.getsockopt(zmq.FD)))
            except Exception:
                pass
            sock.close(0)
        self.zap.stop()
        self.ctx.term()
        unlink_ipc(self.endpoints.gateway_requests(self.gateway_id))
        unlink_ipc(self.endpoints.gateway_streams(self.gateway_id))

    def announce_ready(self, port: int) -> None:
        self._send_sup(m.Ready(id=self.gateway_id, port=port))

    def _send_sup(self, msg: m.ToSupervisor) -> None:
        self.sup.send(self._enc.encode(msg))
        asyncio.get_running_loop().call_soon(self._drain_sup)  # sends can eat the edge

    # --------------------------------------------------------------- readers

    def _drain_router(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            ident, raw = frames[0].bytes, frames[1].bytes
            try:
                msg = self._dec_hello.decode(raw)
            except msgspec.DecodeError:
                log.warning("bad_worker_message", size=len(raw))
                continue
            wid = ident.decode(errors="replace")
            if isinstance(msg, m.Hello):
                if msg.protocol_version != m.PROTOCOL_VERSION:
                    log.error("worker_protocol_mismatch", worker=wid, version=msg.protocol_version)
                    continue
                _, peer_pid = peer_credentials(_peer_address(frames[1]))
                if peer_pid is not None and peer_pid != msg.pid:
                    log.warning("worker_hello_refused", worker=wid, pid=msg.pid, peer_pid=peer_pid)
                    continue
                old = self.workers.get(wid)
                if old is not None and old.pid != msg.pid:
                    self._fail_worker_requests(old, "worker restarted")
                    self.affinity.forget_worker(wid)  # a new process: its RAM cache is empty
                if old is None or old.pid != msg.pid:
                    self.workers[wid] = WorkerRef(wid, ident, msg.pid, set(msg.models), msg.max_concurrency)
            elif isinstance(msg, m.Ready):
                w = self.workers.get(wid)
                if w is not None and not w.ready:
                    w.ready = True
                    w.context_window = msg.context_window
                    log.info("worker_ready", worker=wid, pid=w.pid)
                    self._notify()

    def _drain_streams(self) -> None:
        dec = self._dec_stream
        streams = self.streams
        for _ in range(DRAIN_BATCH):
            # Received frame by frame (as recv_multipart does) so that the binary
            # frames of a media output, which follow the message, are not copied.
            try:
                self.sub.recv(zmq.NOBLOCK)  # topic
            except zmq.Again:
                return
            raw = self.sub.recv() if self.sub.getsockopt(zmq.RCVMORE) else b""
            extra = self.sub.recv_multipart(copy=False) if self.sub.getsockopt(zmq.RCVMORE) else None
            try:
                msg = dec.decode(raw)
            except msgspec.DecodeError:
                self.dropped_frames += 1
                continue
            st = streams.get(msg.request_id)
            if st is None or st.done:
                self.dropped_frames += 1
                continue
            if msg.seq != st.expected_seq:
                log.error("stream_gap", request_id=st.rid, expected=st.expected_seq, got=msg.seq)
                self._terminate(st, m.Failed(st.rid, st.expected_seq, "internal",
                                             f"stream out of order: expected message {st.expected_seq}, got {msg.seq}"))
                self.cancel(st)
                continue
            st.expected_seq += 1
            if st.t_cancel_ns and not isinstance(msg, m.TERMINAL):
                continue  # cancelled: nobody reads it any more, so it is not kept
            if extra is not None and isinstance(msg, m.JobOutput) and isinstance(st, JobStream):
                st.data[msg.seq] = extra
            if isinstance(msg, m.TERMINAL):
                self._terminate(st, msg)
            else:
                st.push(msg)
                if len(st.queue) > MAX_UNREAD:
                    log.warning("client_not_reading", request_id=st.rid, unread=len(st.queue))
                    self.cancel(st)
                    self._terminate(st, m.Failed(st.rid, st.expected_seq, "overloaded",
                                                 f"the client did not read its stream ({MAX_UNREAD} messages unread): "
                                                 f"stopped"))
        # More may be queued, and the fd is edge-triggered: it will not wake us for
        # what is already there. Carry on in the next turn of the loop.
        asyncio.get_running_loop().call_soon(self._drain_streams)

    def _drain_sup(self) -> None:
        while True:
            try:
                raw = self.sup.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = self._dec_sup.decode(raw)
            except msgspec.DecodeError:
                continue
            if isinstance(msg, m.Refused):
                log.error("supervisor_refused", message=msg.message)
                continue
            call = self._calls.pop(msg.call_id, None)
            if call is None:
                # No command waits for it: the answer to one that timed out (a
                # /healthz Status, say), or to one sent without waiting (call_id 0).
                log.debug("stale_supervisor_reply", got=type(msg).__name__, call_id=msg.call_id)
                continue
            fut, sent_at = call
            if isinstance(msg, m.StatusReply | m.WorkersReply):
                self.reconcile(msg.workers, sent_at)
            if not fut.done():
                fut.set_result(msg)

    def _drain_events(self) -> None:
        while True:
            try:
                _topic, raw = self.events.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                ev = self._dec_event.decode(raw)
            except msgspec.DecodeError:
                continue
            if isinstance(ev, m.WorkerEvent) and ev.model:
                if ev.state == "failed":
                    self.model_failed[ev.model] = ev.reason or "failed"
                    self._notify()
                elif ev.state in ("starting", "ready"):
                    self.model_failed.pop(ev.model, None)
            if isinstance(ev, m.WorkerEvent) and ev.state == "draining":
                w = self.workers.get(ev.worker_id)
                if w is not None and (ev.pid == 0 or ev.pid == w.pid):
                    # Finishes what it holds; the supervisor stops it once we
                    # report it empty.
                    w.draining = True
                    log.info("worker_draining", worker=ev.worker_id, in_flight=len(w.in_flight))
                    self.report()
            elif isinstance(ev, m.WorkerEvent) and ev.state in ("exited", "failed", "stopping"):
                w = self.workers.get(ev.worker_id)
                if w is not None and (ev.pid == 0 or ev.pid == w.pid):
                    # Anything the dead worker managed to send is delivered first.
                    self._drain_streams()
                    w.ready = False
                    self._fail_worker_requests(w, f"worker {ev.worker_id} {ev.state}: {ev.reason}".rstrip(": "))
                    del self.workers[ev.worker_id]
                    self.affinity.forget_worker(ev.worker_id)
                    self._notify()

    # ------------------------------------------------------------- streams

    def _notify(self) -> None:
        assert self._worker_changed is not None
        self._worker_changed.set()
        self._worker_changed = asyncio.Event()

    def _terminate(self, st: RequestStream, msg: m.StreamMsg) -> None:
        st.done = True
        self.streams.pop(st.rid, None)
        w = self.workers.get(st.worker_id)
        if w is not None:
            w.in_flight.discard(st.rid)
            w.last_used = time.monotonic()
            if isinstance(msg, m.Done):
                w.prompt_tokens += msg.usage.input_tokens + msg.usage.cache_read_input_tokens
                w.cache_read_tokens += msg.usage.cache_read_input_tokens
            if w.draining and not w.in_flight:
                self.report()  # the supervisor may stop it now
        if st.cancel_handle is not None:
            st.cancel_handle.cancel()
        if st.t_cancel_ns and isinstance(msg, m.Done) and self.on_cancel_done is not None:
            self.on_cancel_done(st, msg)
        st.push(msg)

    def _fail_worker_requests(self, w: WorkerRef, reason: str) -> None:
        for rid in list(w.in_flight):
            st = self.streams.get(rid)
            if st is not None:
                self._terminate(st, m.Failed(rid, st.expected_seq, "worker_died", reason))
        w.in_flight.clear()

    def reconcile(self, listed: list[m.WorkerInfo], asked_at: float) -> None:
        """Forget the workers registered before ``asked_at`` that the supervisor's
        table (``listed``, its answer to a command sent then) does not hold with the
        same pid: they left, or were killed, and no event told (module docstring).

        Replies carry no request id, so an answer that came too late for its own
        command can be taken for the next one's, and be older than ``asked_at``
        says. A worker is therefore forgotten at once only if its process is gone
        too, else after two tables in a row without it (a late one is followed by
        a current one)."""
        known = {(w.id, w.pid) for w in listed if w.pid}
        gone = []
        for w in self.workers.values():
            if (w.id, w.pid) in known:
                w.unlisted = 0
            elif w.registered_at < asked_at:
                w.unlisted += 1
                if w.unlisted >= 2 or not _alive(w.pid):
                    gone.append(w)
        for w in gone:
            log.warning("worker_forgotten", worker=w.id, pid=w.pid, reason="not in the supervisor's table")
            w.ready = False
            self._fail_worker_requests(w, f"worker {w.id} is gone")
            del self.workers[w.id]
        if gone:
            self._notify()

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

    def cancel(self, st: RequestStream) -> None:
        """The client went away: tell the worker, and give it ``cancel_deadline_s``
        to stop before it is treated as wedged and restarted."""
        if st.t_cancel_ns:
            return
        st.t_cancel_ns = time.monotonic_ns()
        w = self.workers.get(st.worker_id)
        if st.done or w is None:
            return
        try:
            self.router.send_multipart([w.ident, self._enc.encode(m.Cancel(st.rid))], zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        asyncio.get_running_loop().call_soon(self._drain_router)
        st.seq_at_check = st.expected_seq
        st.cancel_handle = asyncio.get_running_loop().call_later(
            self.config.server.cancel_deadline_s, self._cancel_overdue, st)

    def _cancel_overdue(self, st: RequestStream) -> None:
        if st.done:
            return
        if st.expected_seq > st.seq_at_check:
            # Still arriving: the worker is alive, and what it sent before it saw the
            # cancel is still being read (a fast worker runs ahead of the gateway).
            # Its Done comes after that; wedged means silent.
            st.seq_at_check = st.expected_seq
            st.cancel_handle = asyncio.get_running_loop().call_later(
                self.config.server.cancel_deadline_s, self._cancel_overdue, st)
            return
        log.error("cancel_overdue", request_id=st.rid, worker=st.worker_id)
        self._send_sup(m.RestartWorker(st.worker_id, reason="did not answer a cancel in time"))
        self._terminate(st, m.Failed(st.rid, st.expected_seq, "worker_died", "worker wedged"))

    async def command(self, cmd: m.Command, timeout: float = 5.0) -> m.FromSupervisor:
        """Send ``cmd`` to the supervisor and wait up to ``timeout`` for its reply,
        the one that carries its ``call_id`` (raises TimeoutError). Several may wait
        at once; a reply that comes after its command gave up is dropped."""
        call_id = next(self._call_ids)
        fut: asyncio.Future[m.FromSupervisor] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (fut, time.monotonic())
        try:
            self._send_sup(msgspec.structs.replace(cmd, call_id=call_id))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._calls.pop(call_id, None)

    def context_window(self, mc: ModelConfig) -> int:
        """The configured window, else what the model's workers loaded it with."""
        if mc.context_window:
            return mc.context_window
        return max((w.context_window for w in self.workers.values() if mc.name in w.models), default=0)

    def model_config(self, name: str) -> ModelConfig | None:
        return self.config.resolve_model(name)


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        addr = frame.get("Peer-Address")
    except zmq.ZMQError:
        return None
    return addr if isinstance(addr, str) else None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
