"""How a family's output is written (:class:`Syntax`, :class:`CallSyntax`: the
markers of its reasoning blocks and tool calls), and finding markers in text that
is still streaming (:func:`find_first`, :func:`holdback`, :func:`unsettled`).
workers/formats/reader.py applies a Syntax to a model's output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from turnout.workers.formats.events import Call
from turnout.workers.formats.jsonpartial import PartialFn
from turnout.workers.formats.schema import ToolSet

Parse = Callable[[str, ToolSet], list[Call]]


@dataclass(frozen=True, slots=True)
class CallSyntax:
    """How one kind of tool call (or section of calls) is written.

    ``open``: the marker that starts it. ``keep_open``: the marker is part of the
    body (``<function=`` in Qwen3-Coder's output, where ``<tool_call>`` may be
    left out). ``close``: markers that end it (consumed). ``ends``: markers that
    end it without being consumed (the next call's opener). With neither, the body
    ends where ``complete`` says (a balanced JSON value, say) or at the end of the
    output. ``parse`` reads a complete body; it raises :class:`NotACall` when the
    body is not a call after all. ``scan``, instead of ``complete``: makes a
    ``complete`` for one call that keeps its place between calls (it is handed the
    same body, grown), so finding a long body's end stays linear
    (:func:`~workers.formats.jsoncalls.json_scan`). ``partial``: makes a reader
    of the body while it is written (handed the same body, grown): the calls in
    it so far, the last one in progress once its name is known, with its
    arguments so far as JSON text (:data:`~workers.formats.jsonpartial.PartialFn`).
    """

    open: str
    parse: Parse
    close: tuple[str, ...] = ()
    ends: tuple[str, ...] = ()
    keep_open: bool = False
    complete: Callable[[str], int | None] | None = None
    at_start_only: bool = False  # only recognised before any text (a bare JSON call)
    scan: Callable[[], Callable[[str], int | None]] | None = None
    partial: Callable[[], PartialFn] | None = None


@dataclass(frozen=True, slots=True)
class Syntax:
    """A family's output. ``think``: (open, close) marker pairs of reasoning blocks.
    ``think_anywhere``: an opener after text starts another block (interleaved
    thinking); otherwise only at the start. ``calls_in_reasoning``: a call opener
    inside an unclosed reasoning block ends it (Kimi, Ling). ``drop``: markers
    removed from the text (content wrappers, end-of-turn markers).

    ``think_ends``: markers that also end a reasoning block, without being consumed
    (the answer's opening wrapper when the model skips the closer: Command A's
    ``<|START_TEXT|>``). ``raw_markers``: with ``raw_reasoning`` the reasoning
    markers stay in the text (llama.cpp's ``reasoning_format = none``); False where
    llama.cpp keeps only the reasoning's text (Ling, Kimi K3).
    ``think_preludes``: text a template writes after the opener that is reasoning
    (Apriel's "Here are my reasoning steps:"): when the prompt ends with opener and
    prelude, the prelude is read as reasoning, not as a prefill."""

    think: tuple[tuple[str, str], ...] = ()
    calls: tuple[CallSyntax, ...] = ()
    drop: tuple[str, ...] = ()
    think_anywhere: bool = False
    calls_in_reasoning: bool = True
    strip_after_think: str = "\n"  # characters dropped between a reasoning block and the answer
    think_ends: tuple[str, ...] = ()
    raw_markers: bool = True
    think_preludes: tuple[str, ...] = ()


def holdback(buf: str, markers: tuple[str, ...], start: int = 0) -> int:
    """Length of the longest suffix of ``buf[start:]`` that is a proper prefix of a marker."""
    best = 0
    n_buf = len(buf) - start
    for mk in markers:
        for n in range(min(len(mk) - 1, n_buf), best, -1):
            if buf.endswith(mk[:n]):
                best = n
                break
    return best


def unsettled(buf: str, i: int, markers: tuple[str, ...]) -> bool:
    """Could the text at ``buf[i:]`` still become a longer marker than the one
    found there (``<|channel>`` that may be the start of ``<|channel>thought``)?"""
    rest = len(buf) - i
    return any(len(mk) > rest and mk.startswith(buf[i:]) for mk in markers)


def find_first(buf: str, markers: tuple[str, ...], start: int = 0) -> tuple[int, str]:
    """(index, marker) of the earliest marker in ``buf[start:]``; (-1, "") if none.
    The longest marker wins at the same index."""
    best_i, best_m = -1, ""
    for mk in markers:
        i = buf.find(mk, start)
        if i >= 0 and (best_i < 0 or i < best_i or (i == best_i and len(mk) > len(best_m))):
            best_i, best_m = i, mk
    return best_i, best_m
