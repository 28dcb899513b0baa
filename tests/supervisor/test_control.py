"""The CLI's control client (supervisor/control.py) against a real ROUTER on a real
ipc socket: each command takes only the reply that carries its call_id."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from turnout.protocol import messages as m
from turnout.protocol.sockets import Endpoints, bind, make_socket
from turnout.supervisor.control import ControlClient, NoAnswer


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))  # 0700, and short for ipc
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_reply_after_a_timeout_does_not_answer_the_next_command(runtime_dir: Path) -> None:
    ctx = zmq.Context()
    router = make_socket(ctx, zmq.ROUTER)
    bind(router, Endpoints(str(runtime_dir)).control)
    seen: list[m.Command] = []
    released = threading.Event()
    dec = msgspec.msgpack.Decoder(m.ToSupervisor)
    enc = msgspec.msgpack.Encoder()

    def supervisor() -> None:
        # Slow on the first command: it answers only after the second one came,
        # the late answer first.
        for _ in range(2):
            if not router.poll(5000):
                return
            ident, raw = router.recv_multipart()
            msg = dec.decode(raw)
            assert isinstance(msg, m.Command)
            seen.append(msg)
        released.wait(5.0)
        router.send_multipart([ident, enc.encode(m.Ack("late: scaled to a=5", call_id=seen[0].call_id))])
        router.send_multipart([ident, enc.encode(m.ErrorReply("no model 'b'", call_id=seen[1].call_id))])

    t = threading.Thread(target=supervisor)
    t.start()
    try:
        with ControlClient(runtime_dir, timeout_s=5.0) as c:
            with pytest.raises(NoAnswer):
                c.request(m.ScaleModel("a", 5), timeout_s=0.2)
            released.set()
            reply = c.request(m.ScaleModel("b", 1))
        assert reply == m.ErrorReply("no model 'b'", call_id=seen[1].call_id)
        assert seen[0].call_id != seen[1].call_id
    finally:
        released.set()
        t.join(5.0)
        router.close(0)
        ctx.term()
