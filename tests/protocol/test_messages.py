"""Wire messages: round trips through one Encoder/typed Decoder, schema evolution."""

from __future__ import annotations

import msgspec
import pytest

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Message, TextPart, ToolResultPart, ToolUsePart, Usage


def _req() -> ChatRequest:
    return ChatRequest(model="x", max_tokens=3, messages=[
        Message("user", [TextPart("hi", cache=True)]),
        Message("assistant", [ToolUsePart("t1", "Bash", {"command": "ls"})]),
        Message("user", [ToolResultPart("t1", [TextPart("out")], is_error=True)]),
    ])


@pytest.mark.parametrize("msg", [
    m.Generate("r1", "gw0", _req()),
    m.Cancel("r1"),
    m.Started("r1", 0, input_tokens=5),
    m.TextDelta("r1", 1, "tok"),
    m.ToolCallStart("r1", 2, 0, "id", "Bash"),
    m.ToolArgsDelta("r1", 3, 0, '{"a"'),
    m.Done("r1", 4, "end_turn", Usage(1, 2, 3, 4), t_stop_ns=99),
    m.Failed("r1", 5, "worker_died", "gone"),
])
def test_round_trip(msg: object) -> None:
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(m.ToWorker | m.StreamMsg)
    assert dec.decode(enc.encode(msg)) == msg


def test_unknown_tag_is_rejected() -> None:
    raw = msgspec.msgpack.encode({"t": "nonsense", "request_id": "r"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(raw, type=m.StreamMsg)


def test_schema_evolution_appended_fields() -> None:
    """A newer peer's extra field is ignored; an older peer's missing field defaults."""
    newer = msgspec.msgpack.encode({"t": "text", "request_id": "r", "seq": 1, "text": "a", "future_field": 7})
    assert msgspec.msgpack.decode(newer, type=m.StreamMsg) == m.TextDelta("r", 1, "a")
    older = msgspec.msgpack.encode({"t": "done", "request_id": "r", "seq": 2, "stop_reason": "end_turn"})
    done = msgspec.msgpack.decode(older, type=m.StreamMsg)
    assert isinstance(done, m.Done) and done.usage == Usage() and done.t_stop_ns == 0


def test_hello_carries_protocol_version() -> None:
    h = msgspec.msgpack.decode(msgspec.msgpack.encode(m.Hello("worker", "w", 1)), type=m.ToSupervisor)
    assert isinstance(h, m.Hello) and h.protocol_version == m.PROTOCOL_VERSION
