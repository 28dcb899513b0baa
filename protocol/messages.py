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

from protocol.chat import ChatRequest, StopReason, Usage

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


ToWorker = Generate | CountTokens | Cancel | Drain


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


FailKind = Literal[
    "invalid_request",  # the request cannot be served as sent (400)
    "context_overflow",  # prompt longer than the model's window (400)
    "overloaded",  # worker busy/draining (529)
    "worker_died",  # worker exited mid-request (529 / in-stream overloaded_error)
    "internal",  # a bug or runtime error in the backend (500)
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


StreamMsg = Started | Ping | TextDelta | ThinkingDelta | ToolCallStart | ToolArgsDelta | Done | Failed | Counted

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
    pass


class RestartWorker(_Msg, tag="restart"):
    worker_id: str
    reason: str = ""


class Shutdown(_Msg, tag="shutdown"):
    pass


Command = ListWorkers | RestartWorker | Shutdown

ToSupervisor = Hello | Ready | Heartbeat | ListWorkers | RestartWorker | Shutdown


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


class WorkersReply(_Msg, tag="workers"):
    workers: list[WorkerInfo]


class Ack(_Msg, tag="ack"):
    message: str = ""


class ErrorReply(_Msg, tag="error"):
    message: str


class Refused(_Msg, tag="refused"):
    """Handshake refused (protocol version mismatch)."""

    message: str


FromSupervisor = WorkersReply | Ack | ErrorReply | Refused


# ------------------------------------------------------------ supervisor PUB events


class WorkerEvent(_Msg, tag="worker"):
    """A worker changed state. ``exited`` means any request it held is lost."""

    worker_id: str
    state: WorkerState
    pid: int = 0
    reason: str = ""


Event = WorkerEvent

EVENTS_TOPIC = b"ev"
