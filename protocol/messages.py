"""Wire messages of the turnout bus.

Every message is a tagged msgspec Struct encoded as msgpack. There are three unions,
one per direction, and each socket owner keeps one Encoder and one typed Decoder:

* ``ToWorker``: gateway -> worker, on the worker's DEALER (from the gateway ROUTER).
* ``StreamMsg``: worker -> gateway, on the worker's XPUB (to the gateway SUB); every
  message carries ``request_id`` and a rising ``seq`` starting at 0; ``Done`` or
  ``Failed`` is always the last one for a request.
* ``ToSupervisor`` / ``FromSupervisor``: hello, heartbeat, typed commands and replies
  between the supervisor and everything else; ``Event``: supervisor PUB.

Schema evolution: fields are only ever appended, always with defaults. ``Hello``
carries ``protocol_version``; a peer with another major version is refused.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from turnout.protocol.chat import ChatRequest, StopReason, Usage
from turnout.protocol.jobparams import (  # noqa: F401 - job parameters are part of this vocabulary (m.OcrParams)
    BrowserAction,
    BrowserParams,
    EmbedParams,
    JobParams,
    OcrParams,
    SttParams,
    TtsParams,
    UpscaleParams,
)

PROTOCOL_VERSION = 1


class _Msg(msgspec.Struct, tag_field="t", omit_defaults=True, array_like=False):
    pass


# ---------------------------------------------------------------- gateway -> worker


class Generate(_Msg, tag="gen"):
    request_id: str
    gateway_id: str
    request: ChatRequest


class CountTokens(_Msg, tag="count"):
    """Count prompt tokens with the model's tokenizer; answered by ``Counted``."""

    request_id: str
    gateway_id: str
    request: ChatRequest


class Cancel(_Msg, tag="cancel"):
    request_id: str


class Drain(_Msg, tag="drain"):
    """Finish in-flight work, accept nothing new."""


# Media and browser jobs: the parameters of each kind are a typed struct
# (protocol/jobparams.py, part of this vocabulary: m.OcrParams ...); the input never
# travels inside the msgpack frame.



class Job(_Msg, tag="job"):
    """A media job; answered by ``JobOutput`` messages and a final ``Done``/``Failed``.
    ``n_frames`` input frames (the uploaded file) follow this frame."""

    request_id: str
    gateway_id: str
    params: JobParams
    n_frames: int = 0


ToWorker = Generate | CountTokens | Cancel | Drain | Job


# ----------------------------------------------------------- worker -> gateway (PUB)


class Started(_Msg, tag="start"):
    request_id: str
    seq: int
    input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Ping(_Msg, tag="ping"):
    """Still working (long prompt processing, model load)."""

    request_id: str
    seq: int


class TextDelta(_Msg, tag="text"):
    request_id: str
    seq: int
    text: str


class ThinkingDelta(_Msg, tag="think"):
    request_id: str
    seq: int
    text: str = ""
    signature: str = ""


class ToolCallStart(_Msg, tag="tool"):
    request_id: str
    seq: int
    index: int
    id: str
    name: str


class ToolArgsDelta(_Msg, tag="args"):
    request_id: str
    seq: int
    index: int
    partial_json: str


class Done(_Msg, tag="done"):
    request_id: str
    seq: int
    stop_reason: StopReason
    usage: Usage = msgspec.field(default_factory=Usage)
    stop_sequence: str = ""
    # CLOCK_MONOTONIC (system-wide on Linux and macOS) when the compute loop stopped:
    # lets the gateway and benchmarks measure cancellation latency across processes.
    t_stop_ns: int = 0


class Passthrough(_Msg, tag="raw"):
    """One upstream SSE event, framed as it is to be written, for a client that
    speaks the upstream's own API (an Anthropic client routed to Anthropic): the
    answer reaches it byte for byte, blocks turnout has no model of included
    (server_tool_use, web_search_tool_result, citations, redacted_thinking, ...).
    The event's parsed messages follow it, for telemetry and other consumers.
    Gateway-internal: no worker sends it."""

    request_id: str
    seq: int
    event: str
    data: bytes


FailKind = Literal[
    "invalid_request",  # the request cannot be served as sent (400)
    "context_overflow",  # prompt longer than the model's window (400)
    "overloaded",  # worker busy/draining (529)
    "worker_died",  # worker exited mid-request (529 / in-stream overloaded_error)
    "internal",  # a bug or runtime error in the backend (500)
    "too_large",  # a media input over a configured limit (413)
]


class Failed(_Msg, tag="fail"):
    request_id: str
    seq: int
    kind: FailKind
    message: str


class Counted(_Msg, tag="counted"):
    request_id: str
    seq: int
    input_tokens: int


class Segment(msgspec.Struct, omit_defaults=True):
    """A transcribed stretch of audio (faster-whisper's fields, as OpenAI's
    verbose_json names them)."""

    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    tokens: list[int] = msgspec.field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] = msgspec.field(default_factory=list)


class Word(msgspec.Struct, omit_defaults=True):
    word: str
    start: float
    end: float
    probability: float = 0.0


class OcrLine(msgspec.Struct, omit_defaults=True):
    text: str
    confidence: float
    box: list[list[float]] = msgspec.field(default_factory=list)  # 4 corners, pixels
    page: int = 0


class JobOutput(_Msg, tag="jobout"):
    """Part of a media job's result, streamed as it is made: STT segments, OCR lines
    of a page, a chunk of synthesised audio, the upscaled image. Binary data (audio,
    image) travels in ``n_frames`` extra frames after this one.

    ``media_type`` names the frames' content (``audio/pcm;rate=22050`` is 16-bit
    little-endian mono; ``image/png``...); ``info`` carries per-job facts the first
    or the last output knows (language, duration, sizes), as strings or numbers."""

    request_id: str
    seq: int
    segments: list[Segment] = msgspec.field(default_factory=list)
    lines: list[OcrLine] = msgspec.field(default_factory=list)
    media_type: str = ""
    n_frames: int = 0
    duration_s: float = 0.0  # audio this output covers (stt: input; tts: output)
    language: str = ""
    width: int = 0
    height: int = 0
    pages: int = 0
    tokens: int = 0  # embed: the input's tokens
    text: str = ""  # appended (issue 18): a browser action's result


StreamMsg = (Started | Ping | TextDelta | ThinkingDelta | ToolCallStart | ToolArgsDelta | Done | Failed | Counted
             | JobOutput | Passthrough)

TERMINAL = (Done, Failed, Counted)


# ------------------------------------------------- anyone <-> supervisor (DEALER/ROUTER)

Role = Literal["worker", "gateway", "cli"]
WorkerState = Literal["starting", "loading", "ready", "draining", "stopping", "exited", "failed"]


class Hello(_Msg, tag="hello"):
    """First message of every peer on every channel (supervisor and gateway)."""

    role: Role
    id: str
    pid: int
    protocol_version: int = PROTOCOL_VERSION
    backend: str = ""
    models: list[str] = msgspec.field(default_factory=list)
    max_concurrency: int = 1


class Ready(_Msg, tag="ready"):
    """The sender can take work. Workers send it to the gateway only after their XPUB
    has seen the gateway's subscription, so no early token is lost."""

    id: str
    port: int = 0  # gateway: the HTTP port it listens on
    context_window: int = 0  # workers: the context size the model was loaded with


class Heartbeat(_Msg, tag="hb"):
    """Sent from the compute loop, so a live heartbeat means a live loop."""

    id: str
    last_step_ns: int  # CLOCK_MONOTONIC of the loop's last step
    rss_bytes: int = 0
    accel_bytes: int = 0
    in_flight: int = 0
    models: list[str] = msgspec.field(default_factory=list)


class ListWorkers(_Msg, tag="list"):
    call_id: int = 0  # appended (issue 15): the reply echoes it (see ``Command``)


class RestartWorker(_Msg, tag="restart"):
    worker_id: str
    reason: str = ""
    call_id: int = 0


class Shutdown(_Msg, tag="shutdown"):
    call_id: int = 0


# Supervisor control (issue 4): typed commands of the CLI and the gateway; each is
# answered by one ``FromSupervisor`` message, except ``GatewayReport``. Every command
# carries a ``call_id`` of the sender's choosing and its reply the same one (issue 15),
# so a reply that comes after its command timed out is recognised and dropped, never
# taken as the answer to the next command. 0: the sender waits for no answer.


class WorkerLoad(msgspec.Struct, omit_defaults=True):
    """What the gateway knows of one worker: requests it holds there, whether it
    still sends it new ones, and how long since it last used it (LRU, keep-alive)."""

    id: str
    in_flight: int = 0
    routing: bool = True
    idle_s: float = 0.0


class GatewayReport(_Msg, tag="gwreport"):
    """Gateway -> supervisor, about once a second and at once when a draining worker
    has no request left. Never answered."""

    id: str
    workers: list[WorkerLoad] = msgspec.field(default_factory=list)


class Status(_Msg, tag="status"):
    """Answered by ``StatusReply``: workers, models, memory."""

    call_id: int = 0


class ScaleModel(_Msg, tag="scale"):
    """Run ``workers`` workers of a model, or of every model of a backend. Scaling
    down drains the workers it stops: no request is lost."""

    target: str
    workers: int
    call_id: int = 0


class LoadModel(_Msg, tag="load"):
    """Make sure a model has a worker (load on demand, ``turnout load``); un-parks a
    model parked as failed when ``unpark`` is set. Refused (``LoadRefused``) when
    memory is short."""

    model: str
    unpark: bool = False
    call_id: int = 0


class EvictModel(_Msg, tag="evict"):
    """Drain and stop every worker of a model."""

    model: str
    call_id: int = 0


Command = ListWorkers | RestartWorker | Shutdown | Status | ScaleModel | LoadModel | EvictModel

ToSupervisor = Hello | Ready | Heartbeat | ListWorkers | RestartWorker | Shutdown | GatewayReport | Status | ScaleModel | LoadModel | EvictModel


class WorkerInfo(msgspec.Struct, omit_defaults=False):
    id: str
    backend: str
    model: str
    pid: int
    state: WorkerState
    rss_bytes: int
    in_flight: int
    restarts: int
    uptime_s: float
    reason: str = ""
    # appended (issue 4)
    priority: int = 0
    idle_s: float = 0.0  # since the gateway last used it
    crashes: int = 0  # in a row (reset after healthy running)


class WorkersReply(_Msg, tag="workers"):
    workers: list[WorkerInfo]
    call_id: int = 0  # the command's (see ``Command``)


class Ack(_Msg, tag="ack"):
    message: str = ""
    call_id: int = 0


class ErrorReply(_Msg, tag="error"):
    message: str
    call_id: int = 0


class Refused(_Msg, tag="refused"):
    """Handshake refused (protocol version mismatch)."""

    message: str


class LoadRefused(_Msg, tag="refused_load"):
    """A load the supervisor will not do now (memory) or at all (parked model).
    ``retry_after_s`` 0: retrying will not help until someone acts."""

    message: str
    retry_after_s: float = 0.0
    call_id: int = 0


class ModelInfo(msgspec.Struct, omit_defaults=False):
    name: str
    backend: str
    desired: int
    running: int
    priority: int = 0
    expected_mb: float = 0.0
    reason: str = ""  # why it has fewer workers than configured (evicted, idle...)


# Why a worker came back, went, or was parked (issue 17: the ``turnout_worker_*_total``
# metrics' ``reason`` label). Fixed vocabularies, so a label never carries free text.
RestartReason = Literal[
    "exited",  # its process exited by itself (a crash, an exit code)
    "killed",  # killed by a signal turnout did not send (the OOM killer, a user)
    "hung",  # no heartbeat for heartbeat_timeout_s: killed by the supervisor
    "requested",  # RestartWorker (the gateway: a cancel not answered in time)
]
EvictionReason = Literal[
    "memory_soft",  # below the soft watermark: an idle worker
    "memory_hard",  # below the hard watermark
    "idle",  # keep_alive_s passed
    "make_room",  # to admit another model's load or restart
    "requested",  # turnout evict / EvictModel
]
ParkReason = Literal["load_error", "crash_loop"]
LifecycleKind = Literal["restart", "eviction", "park"]


class LifecycleCount(msgspec.Struct, omit_defaults=False):
    """How many times the supervisor did ``kind`` to a model's workers, for one
    reason, since it started (issue 17)."""

    model: str
    kind: LifecycleKind
    reason: str  # a RestartReason, EvictionReason or ParkReason
    count: int


class StatusReply(_Msg, tag="statusr"):
    workers: list[WorkerInfo]
    models: list[ModelInfo] = msgspec.field(default_factory=list)
    supervisor_pid: int = 0
    gateway_pid: int = 0
    gateway_restarts: int = 0
    available_bytes: int = 0
    total_bytes: int = 0
    pressure: str = "none"  # none | soft | hard
    soft_available_bytes: int = 0
    hard_available_bytes: int = 0
    port: int = 0
    gateway_ready: bool = False
    call_id: int = 0
    lifecycle: list[LifecycleCount] = msgspec.field(default_factory=list)  # appended (issue 17)


FromSupervisor = WorkersReply | Ack | ErrorReply | Refused | LoadRefused | StatusReply
# The replies to commands (every FromSupervisor but ``Refused``, which answers a Hello).
CommandReply = WorkersReply | Ack | ErrorReply | LoadRefused | StatusReply


# ------------------------------------------------------------ supervisor PUB events


class WorkerEvent(_Msg, tag="worker"):
    """A worker changed state. ``exited`` means any request it held is lost."""

    worker_id: str
    state: WorkerState
    pid: int = 0
    reason: str = ""
    model: str = ""  # appended (issue 4): lets the gateway follow a model's loads


class MemoryEvent(_Msg, tag="memory"):
    """The memory pressure level changed (none | soft | hard)."""

    pressure: str
    available_bytes: int = 0


Event = WorkerEvent | MemoryEvent

EVENTS_TOPIC = b"ev"

