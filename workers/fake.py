"""The ``fake`` backend: deterministic, for tests and overhead benchmarks.

It streams ``max_tokens`` tokens (or ``reply_tokens``, when set and smaller, then
``end_turn``; or what is left of ``context_window`` (default 200,000: prompt and
answer share it, as in a real model), then ``model_context_window_exceeded``)
cycling through the words of the last user message, one every
``token_delay_ms``. Tokens are counted by whitespace.

Knobs (``[models.options]`` in the config), and the same as directives inside the last
user message, so one worker can serve every test:

* ``crash_after_tokens = N`` / ``[[crash:N]]``: ``os._exit(70)`` after N tokens;
* ``hang_after_tokens = N`` / ``[[hang:N]]``: block the compute loop forever after
  N tokens (heartbeats stop);
* ``grow_mb_per_token = X`` / ``[[grow:X]]``: allocate X MiB per token and keep it;
* ``fail_load = true``: the model "fails to load" (exit code 3);
* ``[[tool:NAME {json}]]``: answer with a ``tool_use`` block calling NAME with that
  input (streamed in chunks), stop reason ``tool_use``;
* ``[[think]]``: stream a thinking block (with a signature) before the answer.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Generator
from typing import Any

import msgspec

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Usage, all_text, last_user_text
from turnout.workers.base import (
    BackendError,
    GenContext,
    GenItem,
    ModelLoadError,
    Pause,
    WorkerSpec,
)

EXIT_FAKE_CRASH = 70

_DIRECTIVE = re.compile(r"\[\[(crash|hang|grow|think|tool)(?::([^\]\s]*))?(?:\s+(\{.*?\}))?\]\]", re.S)


class FakeOptions(msgspec.Struct, forbid_unknown_fields=True):
    token_delay_ms: float = 0.0
    reply_tokens: int = 0  # 0: stream exactly max_tokens
    crash_after_tokens: int = -1
    hang_after_tokens: int = -1
    grow_mb_per_token: float = 0.0
    fail_load: bool = False
    load_delay_s: float = 0.0
    context_window: int = 200_000
    max_concurrency: int = 1024


def count_words(text: str) -> int:
    return len(text.split())


class FakeBackend:
    def __init__(self, spec: WorkerSpec) -> None:
        try:
            self.opts = msgspec.convert(spec.options, FakeOptions)
        except msgspec.ValidationError as e:
            raise ModelLoadError(f"fake backend options: {e}") from None
        self.models = [spec.model]
        self.max_concurrency = self.opts.max_concurrency
        self.context_window = self.opts.context_window
        self._hoard: list[bytearray] = []

    def load(self) -> None:
        if self.opts.load_delay_s:
            time.sleep(self.opts.load_delay_s)
        if self.opts.fail_load:
            raise ModelLoadError("fail_load is set")

    def count_tokens(self, req: ChatRequest) -> int:
        return count_words(all_text(req))

    def generate(self, request_id: str, req: ChatRequest, ctx: GenContext) -> Generator[GenItem, None, None]:
        o = self.opts
        text = last_user_text(req)
        crash_at, hang_at, grow_mb = o.crash_after_tokens, o.hang_after_tokens, o.grow_mb_per_token
        tool: tuple[str, dict[str, Any]] | None = None
        think = False
        for kind, arg, js in _DIRECTIVE.findall(text):
            if kind == "crash":
                crash_at = int(arg or 0)
            elif kind == "hang":
                hang_at = int(arg or 0)
            elif kind == "grow":
                grow_mb = float(arg or 1)
            elif kind == "think":
                think = True
            elif kind == "tool":
                try:
                    args = msgspec.json.decode(js or "{}")
                except msgspec.DecodeError:
                    raise BackendError("invalid_request", "[[tool:...]] input is not JSON") from None
                tool = (arg, args)
        words = _DIRECTIVE.sub(" ", text).split() or ["…"]
        input_tokens = self.count_tokens(req)
        if input_tokens > o.context_window:
            raise BackendError(
                "context_overflow",
                f"prompt is too long: {input_tokens} tokens > {o.context_window} maximum",
            )
        yield m.Started(request_id, 0, input_tokens=input_tokens)
        delay_ns = int(o.token_delay_ms * 1e6)
        n_out = 0
        if think and req.thinking is not None and req.thinking.type != "disabled":
            for w in ("Thinking", " about", " it."):
                yield m.ThinkingDelta(request_id, 0, text=w)
                n_out += 1
            yield m.ThinkingDelta(request_id, 0, signature="fake-signature")
        if tool is not None:
            name, args = tool
            yield m.ToolCallStart(request_id, 0, index=0, id=f"toolu_fake{request_id[-12:]}", name=name)
            js = msgspec.json.encode(args).decode()
            for i in range(0, len(js), 8):
                yield m.ToolArgsDelta(request_id, 0, index=0, partial_json=js[i : i + 8])
            n_out += count_words(js)
            yield m.Done(request_id, 0, "tool_use", Usage(input_tokens, n_out))
            return
        # Prompt and answer share the window, as in a real model: the answer stops
        # where the window ends, as llama_cpp ends it.
        limit = req.max_tokens
        stop_reason: Any = "max_tokens"
        room = o.context_window - input_tokens - n_out
        if o.reply_tokens and o.reply_tokens < limit:
            limit = o.reply_tokens
            stop_reason = "end_turn"
        if room < limit:  # the answer fills the window first: as llama_cpp ends it
            limit, stop_reason = room, "model_context_window_exceeded"
        next_due = time.monotonic_ns()
        for i in range(limit):
            if i == crash_at:
                os._exit(EXIT_FAKE_CRASH)
            if i == hang_at:
                while True:  # a wedged compute loop: no heartbeats, no cancels
                    time.sleep(3600)
            if grow_mb:
                self._hoard.append(bytearray(os.urandom(16)) * int(grow_mb * 65536))
            if delay_ns:
                next_due += delay_ns
                if next_due > time.monotonic_ns():
                    yield Pause(next_due)
            w = words[i % len(words)]
            yield m.TextDelta(request_id, 0, text=w if i == 0 else " " + w)
            n_out += 1
        yield m.Done(request_id, 0, stop_reason, Usage(input_tokens, n_out))


def reference_tokens(text: str, max_tokens: int) -> list[str]:
    """What the fake streams for a prompt whose last user text is ``text``: used by
    tests and by the overhead benchmark's in-process baseline."""
    words = _DIRECTIVE.sub(" ", text).split() or ["…"]
    return [words[i % len(words)] if i == 0 else " " + words[i % len(words)] for i in range(max_tokens)]


def create(spec: WorkerSpec) -> FakeBackend:
    return FakeBackend(spec)
