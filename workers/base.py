"""The worker process: one base loop for every backend.

Roles (one owner per socket):

* **I/O thread** (:class:`workers.io_thread.IOThread`) owns every ZeroMQ socket: the DEALER to the
  gateway (requests in), the XPUB to the gateway (streams out), the DEALER to the
  supervisor's bus (hello, heartbeats), each presenting the instance's bus secret
  (protocol/sockets.py), and the inproc PULL that carries what the compute loop
  produces. It marks a ``Cancel`` in the shared abort set the moment it arrives.
* **Compute loop** (:class:`ComputeLoop`, the main thread) runs the backend. It
  interleaves up to ``backend.max_concurrency`` requests, checks the abort set
  between steps, and sends heartbeats, so a live heartbeat means a live loop.

A backend is an object with ``models``, ``max_concurrency``, ``load()``,
``count_tokens(req)`` and ``generate(request_id, req, ctx)``; ``generate`` is a
generator of stream messages (without ``seq``; the loop stamps it) and may yield a
:class:`Pause` to ask not to be stepped again before a moment (the fake backend's
token delay), so other requests proceed meanwhile.

Media backends (ocr, stt, tts, upscale) also have ``run_job(request_id, job, frames,
ctx)``: a generator like ``generate`` that may yield :class:`WithFrames` (a
``JobOutput`` and the binary frames that follow it). Its input frames arrive from the
gateway without a copy, and the loop checks the abort set between the items it
yields, so a job is cancellable between pages, segments and tiles.

Frame layouts on the inproc PUSH -> PULL (the first frame says where it goes):
``[g, topic, msg]``, ``[g, topic, msg, rid]`` (terminal: the I/O thread forgets the
request) and ``[f, topic, msg, *data]`` (an output with binary frames, forwarded to
the XPUB without copying). Heartbeats for the supervisor go on a second inproc pipe,
read first, so a backlog of tokens never delays them.
"""

from __future__ import annotations

import heapq
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import psutil
import structlog
import zmq

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest
from turnout.protocol.exits import EXIT_MODEL_LOAD_ERROR, EXIT_OK
from turnout.protocol.sockets import make_socket
from turnout.protocol.specs import WorkerSpec

if TYPE_CHECKING:
    from turnout.workers.io_thread import IOThread

log = structlog.get_logger()


HEARTBEAT_INTERVAL_S = 0.5

_DEST_GATEWAY = b"g"
_DEST_GATEWAY_FRAMES = b"f"


class BackendError(Exception):
    """A request the backend refuses, with the kind the gateway maps to a status."""

    def __init__(self, kind: m.FailKind, message: str) -> None:
        super().__init__(message)
        self.kind: m.FailKind = kind
        self.message = message


class ModelLoadError(Exception):
    pass


# The extra (pyproject.toml's optional-dependencies) that brings each backend's
# packages; llama_cpp and fake need only the base install.
BACKEND_EXTRAS = {"ocr": "media", "stt": "media", "tts": "media", "upscale": "media", "embed": "media",
                  "mlx_lm": "mlx"}


def missing_extra(backend: str, e: ImportError) -> ModelLoadError:
    """The load error of a backend whose packages cannot be imported: it names the
    extra that brings them, and the module that is missing (or, when the package is
    there but cannot load, the reason: a system library, most often)."""
    extra = BACKEND_EXTRAS[backend]
    if isinstance(e, ModuleNotFoundError):
        what = f"no module {e.name!r}" if e.name else _safe(e)
        return ModelLoadError(f"the {backend} backend needs turnout's {extra} extra, which is not installed "
                              f"({what}): pip install 'turnout[{extra}]'")
    return ModelLoadError(f"the {backend} backend's packages (turnout's {extra} extra) are installed but cannot "
                          f"load: {_safe(e)}")


@dataclass(slots=True)
class Pause:
    """Yielded by a generator: do not step me again before ``until_ns`` (monotonic)."""

    until_ns: int


@dataclass(slots=True)
class WithFrames:
    """Yielded by a job: ``msg`` followed by binary ``frames`` (bytes, or anything
    with the buffer protocol: a numpy array is sent without a copy)."""

    msg: m.JobOutput
    frames: list[Any]


GenItem = m.StreamMsg | Pause | WithFrames


@dataclass(slots=True)
class JobIn:
    """A job as the I/O thread hands it to the compute loop: with its input frames."""

    msg: m.Job
    frames: list[zmq.Frame]


class GenContext:
    """What a backend's generator may ask of the loop while it runs."""

    def __init__(self, loop: ComputeLoop, request_id: str) -> None:
        self._loop = loop
        self.request_id = request_id

    def cancelled(self) -> bool:
        return self.request_id in self._loop.abort

    def heartbeat(self) -> None:
        """Call from long blocking steps (prompt processing) to stay alive."""
        self._loop.maybe_heartbeat()


class Backend(Protocol):
    models: list[str]
    max_concurrency: int

    def load(self) -> None: ...

    def count_tokens(self, req: ChatRequest) -> int: ...

    def generate(self, request_id: str, req: ChatRequest, ctx: GenContext) -> Generator[GenItem, None, None]: ...


# ---------------------------------------------------------------------- compute loop


@dataclass(order=True)
class _Slot:
    due_ns: int
    order: int
    request_id: str = field(compare=False)
    gen: Generator[GenItem, None, None] = field(compare=False)
    topic: bytes = field(compare=False)
    seq: int = field(compare=False, default=0)


class ComputeLoop:
    """Runs the backend on the main thread. See the module docstring."""

    def __init__(self, spec: WorkerSpec, backend: Backend, ctx: zmq.Context) -> None:
        self.spec = spec
        self.backend = backend
        self.ctx = ctx
        self.inbox: queue.Queue[m.ToWorker | JobIn] = queue.Queue()
        # Written by the I/O thread, read here; single set operations are atomic.
        self.abort: set[str] = set()
        self.stopping = False
        self.draining = False
        self._enc = msgspec.msgpack.Encoder()
        self._push: zmq.Socket | None = None
        self._hb_push: zmq.Socket | None = None
        self._last_hb = 0.0
        self._proc = psutil.Process()
        self._active: list[_Slot] = []  # heap by due time
        self._order = 0
        self.last_step_ns = time.monotonic_ns()

    def context_window(self) -> int:
        """The window the backend pinned at load (0 when it has none)."""
        return int(getattr(self.backend, "context_window", 0) or 0)

    # -- output

    def _send(self, topic: bytes, msg: m.StreamMsg, terminal: bool = False) -> None:
        assert self._push is not None
        payload = self._enc.encode(msg)
        if terminal:
            self._push.send_multipart([_DEST_GATEWAY, topic, payload, msg.request_id.encode()])
        else:
            self._push.send_multipart([_DEST_GATEWAY, topic, payload])

    def maybe_heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        self.last_step_ns = time.monotonic_ns()
        if not force and now - self._last_hb < HEARTBEAT_INTERVAL_S:
            return
        self._last_hb = now
        try:
            rss = self._proc.memory_info().rss
        except psutil.Error:
            rss = 0
        hb = m.Heartbeat(
            id=self.spec.id,
            last_step_ns=self.last_step_ns,
            rss_bytes=rss,
            in_flight=len(self._active) + self.inbox.qsize(),
            models=[self.spec.model],
        )
        assert self._hb_push is not None
        self._hb_push.send(self._enc.encode(hb))

    # -- main loop

    def run(self, io: IOThread) -> None:
        io.bound.wait()
        self._push = make_socket(self.ctx, zmq.PUSH)
        self._push.connect(f"inproc://out-{self.spec.id}")
        self._hb_push = make_socket(self.ctx, zmq.PUSH)
        self._hb_push.connect(f"inproc://hb-{self.spec.id}")
        try:
            self.backend.load()
        except ModelLoadError as e:
            log.error("model_load_failed", error=str(e))
            sys.stderr.flush()
            os._exit(EXIT_MODEL_LOAD_ERROR)
        io.loaded.set()
        log.info("worker_ready", backend=self.spec.backend, model=self.spec.model)
        self.maybe_heartbeat(force=True)
        try:
            while not self.stopping:
                self._intake()
                self._step_due()
                self.maybe_heartbeat()
            self._fail_all("overloaded", "worker stopping")
        finally:
            # Closed even when the loop crashed: an open socket would block
            # ctx.term() forever, and the worker would hang instead of exiting.
            self._push.close(linger=1000)
            self._hb_push.close(linger=0)

    def _timeout(self) -> float:
        if not self._active:
            return HEARTBEAT_INTERVAL_S
        wait = (self._active[0].due_ns - time.monotonic_ns()) / 1e9
        return max(0.0, min(wait, HEARTBEAT_INTERVAL_S))

    def _intake(self) -> None:
        timeout = self._timeout()
        block = timeout > 0
        while True:
            try:
                msg = self.inbox.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False  # after the first, take only what is already there
            if isinstance(msg, m.Generate):
                self._start(msg)
            elif isinstance(msg, JobIn):
                self._start_job(msg)
            elif isinstance(msg, m.CountTokens):
                self._count(msg)
            elif isinstance(msg, m.Drain):
                self.draining = True
            # Cancel: the abort set already holds it; the message only woke us.
            if self.abort:
                self._reap_cancelled()

    def _topic(self, request_id: str, gateway_id: str) -> bytes:
        return f"{gateway_id}/{request_id}".encode()

    def _count(self, msg: m.CountTokens) -> None:
        topic = self._topic(msg.request_id, msg.gateway_id)
        try:
            n = self.backend.count_tokens(msg.request)
        except BackendError as e:
            self._send(topic, m.Failed(msg.request_id, 0, e.kind, e.message), True)
            return
        except Exception as e:  # a backend bug must cost one request, not the worker
            log.error("count_tokens_crashed", error=repr(e), tb=traceback.format_exc())
            self._send(topic, m.Failed(msg.request_id, 0, "internal", _safe(e)), True)
            return
        self._send(topic, m.Counted(msg.request_id, 0, n), True)

    def _refused_before_start(self, rid: str, topic: bytes) -> bool:
        """Answer a request cancelled while queued, or one that reaches a draining
        worker, without starting it. True when answered."""
        if rid in self.abort:
            self.abort.discard(rid)
            self._send(topic, m.Done(rid, 0, "cancelled", t_stop_ns=time.monotonic_ns()), True)
            return True
        if self.draining:
            self._send(topic, m.Failed(rid, 0, "overloaded", "worker is draining"), True)
            return True
        return False

    def _start(self, msg: m.Generate) -> None:
        topic = self._topic(msg.request_id, msg.gateway_id)
        rid = msg.request_id
        if self._refused_before_start(rid, topic):
            return
        ctx = GenContext(self, rid)
        gen = self.backend.generate(rid, msg.request, ctx)
        self._order += 1
        heapq.heappush(self._active, _Slot(0, self._order, rid, gen, topic))

    def _start_job(self, job: JobIn) -> None:
        msg = job.msg
        topic = self._topic(msg.request_id, msg.gateway_id)
        rid = msg.request_id
        if self._refused_before_start(rid, topic):
            return
        run_job = getattr(self.backend, "run_job", None)
        if run_job is None:
            self._send(topic, m.Failed(rid, 0, "invalid_request",
                                       f"model {self.spec.model!r} ({self.spec.backend}) does not run media jobs"), True)
            return
        if len(job.frames) != msg.n_frames:
            self._send(topic, m.Failed(rid, 0, "invalid_request",
                                       f"job announced {msg.n_frames} input frames, got {len(job.frames)}"), True)
            return
        gen = run_job(rid, msg, job.frames, GenContext(self, rid))
        self._order += 1
        heapq.heappush(self._active, _Slot(0, self._order, rid, gen, topic))

    def _send_frames(self, topic: bytes, item: WithFrames) -> None:
        assert self._push is not None
        item.msg.n_frames = len(item.frames)
        self._push.send_multipart([_DEST_GATEWAY_FRAMES, topic, self._enc.encode(item.msg), *item.frames],
                                  copy=False)

    def _reap_cancelled(self) -> None:
        keep: list[_Slot] = []
        for slot in self._active:
            if slot.request_id in self.abort:
                self._finish_cancelled(slot)
            else:
                keep.append(slot)
        if len(keep) != len(self._active):
            heapq.heapify(keep)
            self._active = keep

    def _finish_cancelled(self, slot: _Slot) -> None:
        slot.gen.close()
        t = time.monotonic_ns()
        self.abort.discard(slot.request_id)
        self._send(slot.topic, m.Done(slot.request_id, slot.seq, "cancelled", t_stop_ns=t), True)
        log.debug("cancelled", request_id=slot.request_id)

    def _step_due(self) -> None:
        """Step every due request once (round robin by due time)."""
        now = time.monotonic_ns()
        stepped = 0
        while self._active and self._active[0].due_ns <= now:
            slot = heapq.heappop(self._active)
            if slot.request_id in self.abort:
                self._finish_cancelled(slot)
                continue
            if self._step(slot):
                heapq.heappush(self._active, slot)
            stepped += 1
            if stepped % 64 == 0:
                self.maybe_heartbeat()
                if not self.inbox.empty():
                    return  # let cancels and new work in

    def _step(self, slot: _Slot) -> bool:
        """Advance one request by one item. Returns False when it has ended."""
        try:
            item = next(slot.gen)
        except StopIteration:
            # a backend that ends without Done is a bug: still end the stream cleanly
            self._send(slot.topic, m.Failed(slot.request_id, slot.seq, "internal", "backend ended without a result"), True)
            return False
        except BackendError as e:
            self._send(slot.topic, m.Failed(slot.request_id, slot.seq, e.kind, e.message), True)
            return False
        except Exception as e:
            log.error("generate_crashed", request_id=slot.request_id, error=repr(e), tb=traceback.format_exc())
            self._send(slot.topic, m.Failed(slot.request_id, slot.seq, "internal", _safe(e)), True)
            return False
        if isinstance(item, Pause):
            self._order += 1
            slot.due_ns = item.until_ns
            slot.order = self._order
            return True
        if isinstance(item, WithFrames):
            item.msg.seq = slot.seq
            try:
                self._send_frames(slot.topic, item)
            except (TypeError, ValueError) as e:
                return self._unencodable(slot, e)
            slot.seq += 1
            self._order += 1
            slot.order = self._order
            return True
        item.seq = slot.seq
        slot.seq += 1
        if isinstance(item, m.Done):
            if slot.request_id in self.abort:
                item.stop_reason = "cancelled"
                self.abort.discard(slot.request_id)
            item.t_stop_ns = time.monotonic_ns()
            self._send(slot.topic, item, True)
            slot.gen.close()
            return False
        if isinstance(item, m.Failed):
            self._send(slot.topic, item, True)
            slot.gen.close()
            return False
        try:
            self._send(slot.topic, item)
        except TypeError as e:
            # (seq was stamped but nothing was sent: the Failed takes its place)
            slot.seq -= 1
            return self._unencodable(slot, e)
        self._order += 1
        slot.order = self._order
        return True

    def _unencodable(self, slot: _Slot, e: Exception) -> bool:
        """A backend yielded something msgpack cannot encode (a numpy scalar, say):
        a bug that must cost this request, not the worker."""
        log.error("output_unencodable", request_id=slot.request_id, error=repr(e))
        self._send(slot.topic, m.Failed(slot.request_id, slot.seq, "internal", _safe(e)), True)
        slot.gen.close()
        return False

    def _fail_all(self, kind: m.FailKind, message: str) -> None:
        for slot in self._active:
            self._send(slot.topic, m.Failed(slot.request_id, slot.seq, kind, message), True)
            slot.gen.close()
        self._active = []


def _safe(e: BaseException) -> str:
    """An error message for a client: the exception's type and text, no traceback."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:500] if text else type(e).__name__


def _set_pdeathsig() -> None:
    """Linux: die with the supervisor even if it is SIGKILLed."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_worker(spec: WorkerSpec, backend: Backend) -> int:
    _set_pdeathsig()
    # The compute loop holds the GIL while it generates; a short switch interval lets
    # the I/O thread mark a cancel within a millisecond.
    sys.setswitchinterval(0.0005)
    from turnout.workers.io_thread import IOThread

    ctx = zmq.Context()
    loop = ComputeLoop(spec, backend, ctx)
    io = IOThread(spec, ctx, loop)

    def _on_term(signum: int, frame: Any) -> None:
        # Signal handlers only set a flag; the loop acts on it.
        loop.stopping = True

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor owns Ctrl-C
    io.start()
    try:
        loop.run(io)
    except BaseException:
        # Logged here: the teardown below may block, and the traceback must not be lost.
        log.exception("compute_loop_crashed")
        raise
    finally:
        log.info("compute_loop_ended", stopping=loop.stopping)
        io.stop_event.set()
        io.join(timeout=2)
        ctx.term()
    return EXIT_OK
