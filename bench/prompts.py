"""Deterministic benchmark prompts.

The same (workload, size, seed) always gives the same request, so runs on different
days and machines compare; each run of a workload uses its own seed, so a prompt
cache cannot turn run 2 into a cache hit of run 1. Sizes are in tokens, converted to
words with a ratio measured on the endpoint's own tokenizer (``words_per_token``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her all she there would their we him been has when who will no more if out so up said what "
    "its about than into them can only other time new some could these two may first then do any like my now "
    "over such our man me even most made after also did many before must through back years where much your "
    "way well down should because each just those people how too little state good very make world still own "
    "see men work long get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three states himself few house use during "
    "without again place around however home small found thought went say part once general high upon school "
    "every does got united left number course war until always away something fact though water less public "
    "put think almost hand enough far took head yet government system better set told nothing night end why "
    "called didn't eyes find going look asked later knew point next program city business give group toward "
    "young let room president side social given present several order national possible rather second face "
    "per among form important often things looked early white case john become large big need four within "
    "felt children along saw best church ever least power development light thing seemed family interest want "
    "members mind country area others done turned although open god service certain kind problem began different"
).split()


@dataclass
class BenchRequest:
    """A request in Anthropic's shape (what turnout serves and Claude Code sends)."""

    workload: str
    target_tokens: int
    messages: list[dict[str, Any]]
    system: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int = 64

    def body(self, model: str, stream: bool = True) -> dict[str, Any]:
        b: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "stream": stream,
                             "messages": self.messages, "temperature": 0}
        if self.system:
            b["system"] = self.system
        if self.tools:
            b["tools"] = self.tools
        return b


def filler(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(max(1, n_words)):
        w = rng.choice(WORDS)
        out.append(w.capitalize() if i % 12 == 0 else w)
        if i % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def claude_code_tools() -> list[dict[str, Any]]:
    """The 24 tool definitions Claude Code really sends (~16k tokens on Gemma)."""
    return list(json.loads((DATA / "claude_code_tools.json").read_text()))


def claude_code_system() -> list[dict[str, Any]]:
    return list(json.loads((DATA / "claude_code_system.json").read_text()))


def single_turn(tokens: int, seed: int, words_per_token: float = 0.75, max_tokens: int = 64) -> BenchRequest:
    text = filler(int(tokens * words_per_token), seed)
    return BenchRequest("single_turn", tokens, [{"role": "user", "content": text + "\nSummarise the above."}],
                        max_tokens=max_tokens)


def conversation(workload: str, tokens: int, seed: int, words_per_token: float = 0.75,
                 tool_overhead_tokens: int = 0, turns: int = 6, max_tokens: int = 64) -> BenchRequest:
    """A Claude Code-like conversation: its system prompt and tools, then ``turns``
    user/assistant exchanges including tool calls and results, sized to ``tokens``
    in total (``tool_overhead_tokens``: what the system prompt and tools cost)."""
    rng = random.Random(seed)
    body_tokens = max(200, tokens - tool_overhead_tokens)
    per_turn = int(body_tokens * words_per_token / turns)
    msgs: list[dict[str, Any]] = []
    for t in range(turns):
        tid = f"toolu_bench{seed:04d}{t:02d}"
        msgs.append({"role": "user", "content": f"Step {t}: " + filler(per_turn // 3, rng.randrange(1 << 30))})
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": filler(per_turn // 6, rng.randrange(1 << 30))},
            {"type": "tool_use", "id": tid, "name": "Read", "input": {"file_path": f"/src/module_{t}.py"}}]})
        msgs.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tid, "content": filler(per_turn // 2, rng.randrange(1 << 30))}]})
        if t < turns - 1:
            msgs.append({"role": "assistant", "content": filler(12, rng.randrange(1 << 30))})
    msgs[-1]["content"].append({"type": "text", "text": "Now explain what you found."})
    return BenchRequest(workload, tokens, msgs, system=claude_code_system(), tools=claude_code_tools(),
                        max_tokens=max_tokens)


def follow_up(req: BenchRequest, answer: str, seed: int) -> BenchRequest:
    """The next turn of the same conversation: same prefix + a short new message."""
    msgs = [*req.messages, {"role": "assistant", "content": answer or "ok"},
            {"role": "user", "content": filler(20, seed) + " Continue."}]
    return BenchRequest(req.workload, req.target_tokens, msgs, req.system, req.tools, req.max_tokens)
