"""A fake turnout supervisor, the attacker's tool in tests/e2e/test_local_users.py.

    python tests/e2e/fake_supervisor.py CONTROL_PATH VICTIM_PID

Binds a ROUTER at ``CONTROL_PATH`` (mode 0777, so any user can connect) and answers
what the CLI asks as a real supervisor would, naming ``VICTIM_PID`` as its own pid:
``turnout down`` then waits for that pid and kills its process tree. Runs until
killed. Prints ``ready`` once bound.
"""

from __future__ import annotations

import os
import sys

import msgspec
import zmq

from turnout.protocol import messages as m


def main() -> int:
    path, victim = sys.argv[1], int(sys.argv[2])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(f"ipc://{path}")
    os.chmod(path, 0o777)
    print("ready", flush=True)
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(m.ToSupervisor)
    while True:
        ident, raw = sock.recv_multipart()
        msg = dec.decode(raw)
        reply: m.CommandReply
        call_id = getattr(msg, "call_id", 0)  # echoed, as the real one does
        if isinstance(msg, m.Status):
            reply = m.StatusReply(workers=[], supervisor_pid=victim, gateway_pid=victim, port=0,
                                  gateway_ready=True, call_id=call_id)
        else:
            reply = m.Ack("stopping", call_id=call_id)
        sock.send_multipart([ident, enc.encode(reply)])


if __name__ == "__main__":
    sys.exit(main())
