"""A cache-friendly order for a local model's prompt: what every session shares first.

Claude Code sends ~19k tokens of tools and system prompt with every request, nearly
all of it the same for every session of a project, but not in an order a KV cache
can share (see the real requests in tests/fixtures/claude-code):

* its first system block, ``x-anthropic-billing-header: cc_version=2.1.197.<hash>;
  cc_entrypoint=...;``, carries a hash that differs per session, so two sessions'
  prompts part at their 67th character;
* the ``# Environment`` section of the system prompt (working directory, platform,
  OS version, the model-name and knowledge-cutoff lines) varies with the model and
  the machine, and older versions' ``<env>`` block, ``Today's date`` line and a git
  repository's ``gitStatus:`` snapshot vary per session; every renderer writes the
  tools *after* the system text, so any of these made the ~15k tokens of tools
  unshareable too;
* ``role: "system"`` entries sent before the first answer (the Agent tool's list of
  agent types) sit after the user's first words.

:func:`cache_friendly` returns the same conversation in an order that shares:
the billing header is dropped (it means nothing to a local model; providers never
see this transform, so Anthropic upstreams still get it); the volatile system
sections move to the start of the first user turn, after the tools; system entries
sent before the first answer move to the very start of that turn, ahead of the
volatile text. So the prompt reads: stable system text, tools, the system entries
(same for every main session), the volatile sections, then the user's turns as
sent. The model still sees everything Claude Code sent, billing header aside.
Requests from other clients pass through unchanged (nothing matches).

:func:`plan` also gives *probes*: the request cut where sessions part (system,
tools and the stable entries, then a sentinel in place of everything else). The
common prefix of two probes' renderings is exactly the shared prefix, for any chat
template (a worker checkpoints its KV state there), and :func:`prefix_key` hashes
the same shared part without rendering (the gateway routes by it).

Pure functions of a :class:`ChatRequest`: the gateway (routing) and the workers
(rendering, KV states) must agree on them, so they live in protocol/.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import msgspec

from turnout.protocol.chat import ChatRequest, Message, TextPart, ToolResultPart

BILLING_HEADER = "x-anthropic-billing-header:"

# Section headings whose whole section (to the next heading of the same level, or
# the end of the block) varies between sessions, models or machines.
_VOLATILE_HEADINGS = ("# Environment",)
# Whole blocks, wherever they appear in the system text.
_VOLATILE_BLOCKS = (re.compile(r"<env>.*?</env>\n?", re.S),)
# Single lines outside those sections (older Claude Code versions).
_VOLATILE_LINES = re.compile(
    r"^(?:You are powered by the model\b.*|Assistant knowledge cutoff is\b.*|Today's date(?: is)?:?\s.*)\n?",
    re.M,
)
# A snapshot of the git repository, from its first line to the end of its block.
_GIT_STATUS = re.compile(r"^gitStatus:", re.M)


@dataclass(frozen=True, slots=True)
class PrefixPlan:
    """``request``: the cache-friendly request. ``stable``: the leading parts of its
    first user turn that every session of the project shares (moved system entries);
    ``first_user``: that turn's index in ``request.messages`` (-1: none)."""

    request: ChatRequest
    stable: tuple[TextPart, ...] = ()
    first_user: int = -1

    def probe(self, sentinel: str, *, stable: bool = True) -> ChatRequest:
        """The request cut where sessions part: the same system, tools and options,
        one user turn of the stable parts (unless ``stable`` is false: then cut right
        after the tools, where a subagent with the same tools parts), then
        ``sentinel``."""
        lead = list(self.stable) if stable else []
        return msgspec.structs.replace(self.request, messages=[Message("user", [*lead, TextPart(sentinel)])])


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without ``spans``; blank lines left at a seam collapse to one."""
    out, at = [], 0
    for a, b in sorted(spans):
        out.append(text[at:a])
        at = b
    out.append(text[at:])
    joined = out[0]
    for piece in out[1:]:
        if joined.endswith("\n") and piece.startswith("\n"):
            joined = joined.rstrip("\n") + "\n\n" + piece.lstrip("\n")
        elif not joined.strip():
            joined = piece.lstrip("\n") if not joined else joined + piece
        else:
            joined += piece
    return joined


def _split_sections(text: str) -> tuple[str, list[str]]:
    """``text`` without its volatile sections, and those sections in order."""
    moved: list[str] = []
    for heading in _VOLATILE_HEADINGS:
        level = heading.split(" ", 1)[0]
        start = re.search(rf"^{re.escape(heading)}[ \t]*$", text, re.M)
        if start is None:
            continue
        nxt = re.compile(rf"^{re.escape(level)} \S", re.M).search(text, start.end())
        end = nxt.start() if nxt else len(text)
        moved.append(text[start.start():end].rstrip("\n"))
        text = _cut(text, [(start.start(), end)])
    for block in _VOLATILE_BLOCKS:
        spans = [(mt.start(), mt.end()) for mt in block.finditer(text)]
        moved.extend(text[a:b].rstrip("\n") for a, b in spans)
        text = _cut(text, spans) if spans else text
    git = _GIT_STATUS.search(text)
    if git is not None:
        moved.append(text[git.start():].rstrip("\n"))
        text = text[:git.start()]
    spans = [(mt.start(), mt.end()) for mt in _VOLATILE_LINES.finditer(text)]
    if spans:
        moved.append("\n".join(text[a:b].rstrip("\n") for a, b in spans))
        text = _cut(text, spans)
    return (text.rstrip("\n") if moved else text), moved


def _has_tool_results(msg: Message) -> bool:
    return any(isinstance(p, ToolResultPart) for p in msg.content)


def plan(req: ChatRequest) -> PrefixPlan:
    """The cache-friendly request and how to probe its shared prefix (module doc)."""
    system: list[TextPart] = []
    volatile: list[str] = []
    for part in req.system:
        if part.text.lstrip().startswith(BILLING_HEADER):
            rest = part.text.lstrip().split("\n", 1)[1] if "\n" in part.text.lstrip() else ""
            if not rest.strip():
                continue
            part = TextPart(rest, part.cache)
        text, moved = _split_sections(part.text)
        volatile.extend(moved)
        if text.strip():
            system.append(TextPart(text, part.cache) if text != part.text else part)
    first_user = next((i for i, msg in enumerate(req.messages) if msg.role == "user"), -1)
    first_answer = next((i for i, msg in enumerate(req.messages) if msg.role == "assistant"), len(req.messages))
    if first_user < 0 or _has_tool_results(req.messages[first_user]):
        # Nowhere after the tools to put them: leave the order alone.
        if not volatile:
            return PrefixPlan(msgspec.structs.replace(req, system=system) if len(system) != len(req.system) else req)
        return PrefixPlan(req)
    # System entries before the first answer: the same for every session (the Agent
    # tool's agent list); entries after it stay where they are (a later turn must
    # not change what an earlier turn's prompt was).
    stable: list[TextPart] = []
    messages: list[Message] = []
    for i, msg in enumerate(req.messages):
        if msg.role == "system" and i < first_answer:
            stable.extend(p for p in msg.content if isinstance(p, TextPart) and p.text)
            continue
        messages.append(msg)
    if not volatile and not stable and len(system) == len(req.system) and all(
            a is b for a, b in zip(system, req.system, strict=True)):
        return PrefixPlan(req, (), first_user)
    first = next(i for i, msg in enumerate(messages) if msg.role == "user")
    lead: list[TextPart] = [*stable, *([TextPart("\n\n".join(volatile))] if volatile else [])]
    messages[first] = Message("user", [*lead, *messages[first].content])
    out = msgspec.structs.replace(req, system=system, messages=messages)
    return PrefixPlan(out, tuple(stable), first)


def cache_friendly(req: ChatRequest) -> ChatRequest:
    """``req`` in the order that shares (module docstring); unchanged if nothing moves."""
    return plan(req).request


def prefix_key(req: ChatRequest) -> str:
    """A hash of what every session with this request's model, tools and stable
    system text shares: what a worker's shared-prefix KV state holds."""
    p = plan(req)
    h = hashlib.blake2b(digest_size=16)
    h.update(msgspec.msgpack.encode([p.request.system, p.request.tools, list(p.stable),
                                     p.request.tool_choice, p.request.response_format]))
    return h.hexdigest()
