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
from typing import Any

import msgspec
import psutil
import structlog
import zmq

from turnout.gateway import affinity as aff
from turnout.gateway.dispatch import Dispatch, JobStream, RequestStream, WorkerRef
from turnout.gateway.metrics import Metrics
from turnout.protocol import messages as m
from turnout.protocol.config import Config, ModelConfig
from turnout.protocol.paths import peer_credentials
from turnout.protocol.sockets import (
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
# 4096 (a few ms of work): at 256, 200 concurrent streams each woke for a token at a
# time and wrote it alone, and the gateway carried 21% fewer tokens/s (bench.ab_overhead).
DRAIN_BATCH = 4096
# Messages of one local stream received but not yet taken by its handler: one whose
# client does not read (its handler waits on a full socket) stops growing here, and
# its generation is stopped. A model at 100 tokens/s fills it in under three minutes.
MAX_UNREAD = 16_384
RECONCILE_EVERY = 5  # reports: a ListWorkers to the supervisor every 5 s


class Bus(Dispatch):
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
        self.metrics: Metrics | None = None  # set by the app with [metrics] enabled

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
        if st.t_cancel_ns and isinstance(msg, m.Done):
            if self.metrics is not None:
                self.metrics.cancelled(st.model, st.t_cancel_ns, msg.t_stop_ns)
            if self.on_cancel_done is not None:
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
