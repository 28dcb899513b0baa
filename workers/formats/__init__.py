"""Chat formats: how each model family's chat template writes a conversation, and
how that family's answers are read back (text, reasoning, tool calls).

* :mod:`workers.formats.families`: the families, and :func:`detect` from a template.
* :mod:`workers.formats.reader`: the streaming reader most families share.
* :mod:`workers.formats.jinja_env`: the sandbox chat templates render in.
"""

from __future__ import annotations

from turnout.workers.formats.events import Call, Event, NotACall, Text, Thinking
from turnout.workers.formats.families import Family, by_name, detect, registry
from turnout.workers.formats.schema import ToolSet

__all__ = ["Call", "Event", "Family", "NotACall", "Text", "Thinking", "ToolSet", "by_name", "detect",
           "reasoning_open", "registry"]


def reasoning_open(family: Family, prompt: str) -> str:
    """The reasoning block the prompt leaves open for the model (its opener and
    whatever follows it, e.g. ``"<think>\\n"``), or "" when the answer starts
    outside one (no opener, or the template closed it: ``<think></think>``).
    A family with a reader of its own may say what its prompt leaves open
    (:attr:`Family.prompt_open`)."""
    if family.prompt_open is not None:
        return family.prompt_open(prompt)
    if family.syntax is None:
        return ""
    tail = prompt[-4096:]
    best = -1
    for opener, closer in family.syntax.think:
        i = tail.rfind(opener)
        if i >= 0 and closer not in tail[i + len(opener):] and i > best:
            best = i
    return tail[best:] if best >= 0 else ""
