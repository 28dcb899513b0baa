"""The worker's I/O thread: it owns every socket of the worker process (the
supervisor's bus, each gateway's requests and streams), hands requests to the
compute loop (:class:`workers.base.ComputeLoop`) through its inbox, marks cancels in
the loop's abort set the moment they arrive, and forwards what the loop produces:
heartbeats to the supervisor on a pipe of their own, stream messages to the
gateways in order, at most ``FORWARD_BATCH`` per turn so that a Cancel is never kept
waiting behind a fast backend's tokens."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import msgspec
import structlog
import zmq

from turnout.protocol import messages as m
from turnout.protocol.exits import EXIT_ERROR
from turnout.protocol.sockets import Endpoints, join_bus, make_socket
from turnout.protocol.specs import WorkerSpec
from turnout.workers.base import _DEST_GATEWAY_FRAMES, JobIn

if TYPE_CHECKING:
    from turnout.workers.base import ComputeLoop

log = structlog.get_logger()

FORWARD_BATCH = 256  # messages forwarded per turn of the I/O thread's poll loop
_ANSWERED = ("gen", "count", "job")  # the tags of messages that start a request


class IOThread(threading.Thread):
    """Owns the worker's sockets. Talks to the compute loop through ``inbox``
    (a queue.Queue of ToWorker messages) and the inproc PULL socket."""

    def __init__(self, spec: WorkerSpec, ctx: zmq.Context, loop: ComputeLoop) -> None:
        super().__init__(name="worker-io", daemon=True)
        self.spec = spec
        self.ctx = ctx
        self.loop = loop
        self.endpoints = Endpoints(spec.runtime_dir)
        self.loaded = threading.Event()
        self.stop_event = threading.Event()
        self.live: set[str] = set()  # request ids forwarded and not yet terminated
        self._ready_sent: set[str] = set()
        self.bound = threading.Event()  # the inproc PULL exists

    def hello(self) -> m.Hello:
        return m.Hello(
            role="worker",
            id=self.spec.id,
            pid=os.getpid(),
            backend=self.spec.backend,
            models=[self.spec.model, *self.spec.aliases],
            max_concurrency=self.loop.backend.max_concurrency,
        )

    def run(self) -> None:
        enc = msgspec.msgpack.Encoder()
        dec_in = msgspec.msgpack.Decoder(m.ToWorker)
        ident = self.spec.id.encode()
        secret = self.spec.bus_secret
        pull = make_socket(self.ctx, zmq.PULL)
        pull.bind(f"inproc://out-{self.spec.id}")
        # Heartbeats come on a pipe of their own: behind a backlog of tokens (a
        # backend producing faster than this thread forwards) they would arrive late
        # and the supervisor would kill a busy worker as hung.
        hb_pull = make_socket(self.ctx, zmq.PULL)
        hb_pull.bind(f"inproc://hb-{self.spec.id}")
        self.bound.set()
        # Every connection presents the bus secret: the supervisor and the gateway
        # accept no other (protocol/sockets.py).
        sup = make_socket(self.ctx, zmq.DEALER, identity=ident)
        join_bus(sup, self.spec.id, secret)
        sup.connect(self.endpoints.bus)
        sup.send(enc.encode(self.hello()))
        gw_dealers: dict[str, zmq.Socket] = {}
        xpub = make_socket(self.ctx, zmq.XPUB)
        join_bus(xpub, self.spec.id, secret)
        for gid in self.spec.gateway_ids:
            d = make_socket(self.ctx, zmq.DEALER, identity=ident)
            join_bus(d, self.spec.id, secret)
            d.connect(self.endpoints.gateway_requests(gid))
            d.send(enc.encode(self.hello()))
            gw_dealers[gid] = d
            xpub.connect(self.endpoints.gateway_streams(gid))
        subscribed: set[str] = set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(hb_pull, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        poller.register(sup, zmq.POLLIN)
        for d in gw_dealers.values():
            poller.register(d, zmq.POLLIN)
        parent = os.getppid()
        abort = self.loop.abort
        inbox = self.loop.inbox
        was_loaded = False
        try:
            while not self.stop_event.is_set():
                events = dict(poller.poll(250))
                if os.getppid() != parent:  # supervisor gone (macOS: no PDEATHSIG)
                    log.warning("supervisor_gone")
                    os._exit(EXIT_ERROR)
                if hb_pull in events:
                    while True:
                        try:
                            sup.send(hb_pull.recv(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                if pull in events:
                    # Forward what the compute loop produced, in order, at most
                    # FORWARD_BATCH at a time: a backend that produces as fast as
                    # this thread forwards must not keep it from reading a Cancel.
                    for _ in range(FORWARD_BATCH):
                        try:
                            dest = pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if dest == _DEST_GATEWAY_FRAMES:
                            # media output: the data frames are passed on as they
                            # are, never copied (an image or seconds of audio).
                            out = pull.recv_multipart(copy=False)
                            xpub.send_multipart(out, copy=False)
                            continue
                        frames = pull.recv_multipart(copy=True)  # topic, msg[, rid]
                        xpub.send_multipart(frames)
                        if len(frames) > 2:  # a terminal message carries its rid
                            rid = frames[2].decode()
                            self.live.discard(rid)
                            abort.discard(rid)
                if xpub in events:
                    while True:
                        try:
                            sub = xpub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if sub[:1] == b"\x01":
                            gid = sub[1:].decode(errors="replace")
                            if gid in gw_dealers:
                                subscribed.add(gid)
                                # a (re)subscribing gateway may be a restarted one
                                self._ready_sent.discard(gid)
                                gw_dealers[gid].send(enc.encode(self.hello()))
                for d in gw_dealers.values():
                    if d in events:
                        while True:
                            try:
                                raw = d.recv(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            # A job's input follows as more frames of the same
                            # message; they are kept as zero-copy zmq.Frames.
                            extra = d.recv_multipart(copy=False) if d.getsockopt(zmq.RCVMORE) else None
                            try:
                                msg = dec_in.decode(raw)
                            except msgspec.DecodeError as e:
                                self._refuse(raw, e, xpub, enc)
                                continue
                            if isinstance(msg, m.Cancel):
                                if msg.request_id in self.live:
                                    abort.add(msg.request_id)
                                    inbox.put(msg)  # wakes a paused compute loop
                            elif isinstance(msg, m.Generate | m.CountTokens):
                                self.live.add(msg.request_id)
                                inbox.put(msg)
                            elif isinstance(msg, m.Job):
                                self.live.add(msg.request_id)
                                inbox.put(JobIn(msg, extra or []))
                            elif isinstance(msg, m.Drain):
                                inbox.put(msg)
                if sup in events:
                    while True:
                        try:
                            sup.recv(zmq.NOBLOCK)  # acks; nothing to do yet
                        except zmq.Again:
                            break
                loaded = self.loaded.is_set()
                if loaded and not was_loaded:
                    sup.send(enc.encode(m.Ready(id=self.spec.id, context_window=self.loop.context_window())))
                    was_loaded = True
                if loaded:
                    for gid in subscribed - self._ready_sent:
                        gw_dealers[gid].send(enc.encode(m.Ready(id=self.spec.id, context_window=self.loop.context_window())))
                        self._ready_sent.add(gid)
        finally:
            for s in [pull, sup, xpub, *gw_dealers.values()]:
                s.close(0)

    @staticmethod
    def _refuse(raw: bytes, e: msgspec.DecodeError, xpub: zmq.Socket, enc: msgspec.msgpack.Encoder) -> None:
        """A message from the gateway this worker cannot read (a value of the wrong
        type an adapter let through): its request, when it names one, ends at once
        with ``Failed(invalid_request)`` naming the field, so the client gets a 400
        and nothing waits for an answer that would never come. The gateway does not
        check its own messages on the way out: that would cost every request a
        second decode on its loop."""
        try:
            head = msgspec.msgpack.decode(raw)
        except msgspec.DecodeError:
            head = None
        rid = head.get("request_id") if isinstance(head, dict) else None
        gid = head.get("gateway_id") if isinstance(head, dict) else None
        log.error("bad_message_from_gateway", size=len(raw), error=str(e)[:200], request_id=rid)
        if not isinstance(rid, str) or not isinstance(gid, str) or head.get("t") not in _ANSWERED:
            return
        what, _, where = str(e).partition(" - at `$.")
        field = where.rstrip("`").removeprefix("request.")
        failed = m.Failed(rid, 0, "invalid_request", f"invalid request: {what}" + (f" ({field})" if field else ""))
        xpub.send_multipart([f"{gid}/{rid}".encode(), enc.encode(failed), rid.encode()])
