"""The hand-off between whoever produces a request's stream messages (the bus
reader, a cloud provider's task) and the one handler task that consumes them."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from turnout.protocol import messages as m


class MessageQueue:
    """Producers push; ``next_batch()`` returns everything pending (waiting for at
    least one message), so a handler writes a burst of tokens in one write."""

    __slots__ = ("_buf", "_waiter")

    def __init__(self) -> None:
        self._buf: deque[m.StreamMsg] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._buf)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def push(self, msg: m.StreamMsg) -> None:
        self._buf.append(msg)
        self._wake()

    def extend(self, msgs: Iterable[m.StreamMsg]) -> None:
        self._buf.extend(msgs)
        self._wake()

    async def next_batch(self) -> list[m.StreamMsg]:
        while not self._buf:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        out = list(self._buf)
        self._buf.clear()
        return out
