"""Helpers of the supervisor's integration tests: the control socket of a running
turnout, and a streaming client that checks every stream's text."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from turnout.protocol import messages as m
from turnout.supervisor.control import ControlClient
from turnout.supervisor.launch import TurnoutProcess
from turnout.workers.fake import reference_tokens


def command(t: TurnoutProcess, cmd: m.Command) -> m.FromSupervisor:
    with ControlClient(t.runtime_dir, timeout_s=5.0) as c:
        return c.request(cmd)


def status(t: TurnoutProcess) -> m.StatusReply:
    st = command(t, m.Status())
    assert isinstance(st, m.StatusReply), st
    return st


def workers_of(t: TurnoutProcess, model: str, state: str | None = None) -> list[m.WorkerInfo]:
    return [w for w in status(t).workers if w.model == model and (state is None or w.state == state)]


@dataclass
class StreamResult:
    status: int
    text: str = ""
    events: list[str] = field(default_factory=list)
    error: str = ""  # the error type, from the body or an in-stream error event
    retry_after: str | None = None
    stopped: bool = False  # message_stop received


async def stream(session: aiohttp.ClientSession, t: TurnoutProcess, prompt: str, max_tokens: int,
                 model: str = "fake") -> StreamResult:
    """One streaming /v1/messages request, read to the end."""
    body = {"model": model, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}
    async with session.post(t.base_url + "/v1/messages", json=body, headers={"x-api-key": t.token}) as r:
        res = StreamResult(r.status, retry_after=r.headers.get("Retry-After"))
        if r.status != 200:
            res.error = (await r.json())["error"]["type"]
            return res
        event = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
                res.events.append(event)
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "content_block_delta" and data["delta"]["type"] == "text_delta":
                    res.text += data["delta"]["text"]
                elif event == "error":
                    res.error = data["error"]["type"]
                elif event == "message_stop":
                    res.stopped = True
        return res


def expected_text(prompt: str, max_tokens: int) -> str:
    return "".join(reference_tokens(prompt, max_tokens))


_OBJ = re.compile(r"\{[^{}]*\}")


def log_events(t: TurnoutProcess, name: str) -> list[dict[str, Any]]:
    """The JSON log events called ``name``. Every process of a turnout appends to
    one log; under load two lines can end up glued on one, so each JSON object is
    found by itself rather than line by line."""
    out = []
    for frag in _OBJ.findall(t.log_text()):
        if name in frag:
            try:
                ev = json.loads(frag)
            except ValueError:
                continue
            if ev.get("event") == name:
                out.append(ev)
    return out
