"""Bus authentication (protocol/sockets.py): real ZeroMQ sockets over ipc, the ZAP
handler admitting only the instance's secret on the bus and only the same uid on
the local door."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from turnout.protocol.sockets import ZapHandler, join_bus, make_socket, serve_bus, serve_local

SECRET = "instance-bus-secret"


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def _delivered(ctx: zmq.Context, server: zmq.Socket, endpoint: str, secret: str | None) -> bool:
    """Whether a DEALER presenting ``secret`` (None: no credentials) gets a message through."""
    client = make_socket(ctx, zmq.DEALER, identity=b"w-0")
    try:
        if secret is not None:
            join_bus(client, "w-0", secret)
        client.connect(endpoint)
        client.send(b"hello")
        if not server.poll(1000):
            return False
        frames = server.recv_multipart(copy=False)
        assert frames[0].bytes == b"w-0" and frames[1].bytes == b"hello"
        if secret is not None:
            assert frames[1].get("User-Id") == "w-0"  # who authenticated, for the receiver
        return True
    finally:
        client.close(0)


def test_the_bus_admits_the_secret_and_nothing_else(ctx: zmq.Context, tmp_path: Path) -> None:
    zap = ZapHandler(ctx, SECRET)
    zap.start()
    server = make_socket(ctx, zmq.ROUTER)
    serve_bus(server)
    ep = f"ipc://{tmp_path}/bus"
    server.bind(ep)
    try:
        assert not _delivered(ctx, server, ep, None)  # no credentials (NULL)
        assert not _delivered(ctx, server, ep, "guessed")
        assert zap.refused >= 1
        assert _delivered(ctx, server, ep, SECRET)
    finally:
        server.close(0)
        zap.stop()


def test_without_a_handler_the_bus_fails_closed(ctx: zmq.Context, tmp_path: Path) -> None:
    server = make_socket(ctx, zmq.ROUTER)
    serve_bus(server)
    ep = f"ipc://{tmp_path}/bus"
    server.bind(ep)
    try:
        assert not _delivered(ctx, server, ep, SECRET)
    finally:
        server.close(0)


def test_the_local_door_takes_the_same_uid_without_a_secret(ctx: zmq.Context, tmp_path: Path) -> None:
    zap = ZapHandler(ctx, SECRET)
    zap.start()
    server = make_socket(ctx, zmq.ROUTER)
    serve_local(server)
    ep = f"ipc://{tmp_path}/control"
    server.bind(ep)
    try:
        assert _delivered(ctx, server, ep, None)
    finally:
        server.close(0)
        zap.stop()


def test_the_handler_refuses_another_uid_whatever_it_presents() -> None:
    zap = ZapHandler(zmq.Context.instance(), SECRET)
    other = os.getuid() + 1
    for mech, creds in ((b"NULL", []), (b"PLAIN", [b"w-0", SECRET.encode()])):
        reply = zap.answer([b"1.0", b"7", b"turnout-local", f"localhost:{other}:{other}:4242".encode(), b"",
                            mech, *creds])
        assert reply[:3] == [b"1.0", b"7", b"400"] and f"uid {other}".encode() in reply[3]
    ok = zap.answer([b"1.0", b"8", b"turnout-bus", f"localhost:{os.getuid()}:0:1".encode(), b"", b"PLAIN",
                     b"w-0", SECRET.encode()])
    assert ok == [b"1.0", b"8", b"200", b"OK", b"w-0", b""]
