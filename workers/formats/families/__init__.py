"""The chat-format families turnout reads, and how one is chosen for a template.

Each module in this package defines ``FAMILIES``: :class:`Family` entries, each
with the template signatures that identify it, how its output is read (a
:class:`~workers.formats.syntax.Syntax` or a reader of its own), and how a forced
tool call is written in its format. :func:`detect` tries them in ``order`` and
takes the first whose ``match`` accepts the template; ``generic`` (JSON calls in
the prompt's instructions) catches the rest.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turnout.workers.formats.events import Event
from turnout.workers.formats.reader import Reader
from turnout.workers.formats.schema import ToolSet
from turnout.workers.formats.syntax import Syntax


class StreamReader:
    """What a family's reader offers (:class:`~workers.formats.reader.Reader` or its own)."""

    def feed(self, text: str) -> list[Event]:
        raise NotImplementedError

    def finish(self) -> list[Event]:
        raise NotImplementedError

    def partial_calls(self) -> list[Any]:
        """The calls being written, so far (:meth:`~workers.formats.reader.Reader.partial_calls`)."""
        raise NotImplementedError

    def commit(self) -> None:
        """The call being written was announced (:meth:`~workers.formats.reader.Reader.commit`)."""
        raise NotImplementedError

    def in_bare_call(self) -> bool:
        """A bare JSON answer being read as a call (:meth:`~workers.formats.reader.Reader.in_bare_call`)."""
        return False


ReaderFactory = Callable[..., Any]


@dataclass(frozen=True)
class Family:
    """One way models write their answers.

    ``match``: does a chat template belong to this family (its signature markers).
    ``syntax`` or ``reader``: how output is read (``reader(tools, reasoning_open=,
    raw_reasoning=, tools_enabled=)`` for families with a reader of their own).
    ``forced_call``: ``(name, arguments_json) -> text``: a call written the way
    this family writes it (the grammar of a forced ``tool_choice`` is built from
    it, and it is how an earlier call appears when a template cannot render one).
    ``stops``: end-of-turn strings beyond the model's own end-of-generation tokens.
    ``prompt_open``: for a family with a reader of its own, what the end of the
    prompt leaves open, handed to the reader as ``reasoning_open`` (functionary's
    generation prompt ends with ``>>>``: the answer starts with a recipient).
    """

    name: str
    title: str
    match: Callable[[str], bool]
    syntax: Syntax | None = None
    reader: ReaderFactory | None = None
    forced_call: Callable[[str, str], str] | None = None
    stops: tuple[str, ...] = ()
    order: int = 100
    examples: tuple[str, ...] = field(default=())  # template files of llama.cpp's that are this family
    prompt_open: Callable[[str], str] | None = None

    def new_reader(self, tools: ToolSet | None = None, *, reasoning_open: str = "",
                   raw_reasoning: bool = False, tools_enabled: bool = True,
                   json_response: bool = False) -> Any:
        """``json_response``: the request asked for a JSON answer (see
        :class:`~workers.formats.reader.Reader`; readers of their own ignore it)."""
        if self.reader is not None:
            return self.reader(tools or ToolSet(), reasoning_open=reasoning_open,
                               raw_reasoning=raw_reasoning, tools_enabled=tools_enabled)
        assert self.syntax is not None
        return Reader(self.syntax, tools, reasoning_open=reasoning_open, raw_reasoning=raw_reasoning,
                      tools_enabled=tools_enabled, json_response=json_response)


def has(*markers: str) -> Callable[[str], bool]:
    """A ``match`` that wants every marker in the template."""
    return lambda t: all(m in t for m in markers)


def _load() -> dict[str, Family]:
    found: list[Family] = []
    for mod in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        found.extend(getattr(module, "FAMILIES", []))
    found.sort(key=lambda f: (f.order, f.name))
    out: dict[str, Family] = {}
    for f in found:
        if f.name in out:
            raise RuntimeError(f"two chat-format families are named {f.name!r}")
        out[f.name] = f
    return out


@functools.cache
def registry() -> dict[str, Family]:
    return _load()


def by_name(name: str) -> Family:
    reg = registry()
    if name not in reg:
        raise KeyError(f"unknown tool_format {name!r}; one of: {', '.join(reg)}")
    return reg[name]


def detect(template: str) -> Family:
    """The family of a chat template (``generic`` when none matches)."""
    for fam in registry().values():
        if fam.name != "generic" and fam.match(template):
            return fam
    return registry()["generic"]
