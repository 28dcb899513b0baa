"""Chat formats: what reading a model's output costs, and how much of llama.cpp's
parser test suite turnout passes, per family (issue 12).

Run:  .venv/bin/python -m turnout.bench.formats [--rounds N]
Writes bench/results/formats.json and bench/results/formats.md.

Measured side by side in one run on this machine:

* generation: decode time per token of the bundled default model (Gemma 3 270M,
  llama.cpp in-process, greedy, every core), the cost the parser is weighed
  against;
* parsing, per family: a representative answer written the way the family
  writes it (a reasoning block where the family has one, prose, then a Write
  call with ~2 KB of code), split into the default model's tokens and fed one
  token at a time, as the worker does: the family's reader alone, and the whole
  answer writer (stop strings + reader + wire messages). Per token = total /
  tokens, median of the rounds;
* correctness: every parse case of llama.cpp's tests/test-chat.cpp
  (tests/fixtures/chat-formats), read whole and one character at a time, passed
  per family (the family detected from the case's template).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"

CODE = "\n".join(
    f"def handler_{i}(request):\n    \"\"\"Route {i}: <b>bold</b> & {{braces}}.\"\"\"\n"
    f"    data = {{\"id\": {i}, \"tags\": [\"a\", \"b\"]}}\n    return respond(data, status=200)\n"
    for i in range(12)
)
REASONING = ("The user wants a small web handler module. I should write the file with one function per route, "
             "keep the docstrings short, and return JSON-shaped dicts. ") * 6
PROSE = "I'll write the handlers to app/handlers.py now; each returns a dict the framework serialises.\n"


def sample(family: Any) -> str:
    """A long answer in ``family``'s own format."""
    call = family.forced_call("Write", json.dumps({"file_path": "app/handlers.py", "content": CODE}))
    think = ""
    if family.syntax is not None and family.syntax.think:
        o, c = family.syntax.think[0]
        think = f"{o}{REASONING}{c}\n"
    return f"{think}{PROSE}{call}"


def generation_s_per_token(model: Path, n: int = 64, rounds: int = 3) -> float:
    from llama_cpp import Llama

    threads = os.cpu_count() or 1
    llm = Llama(str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
    prompt = llm.tokenize(b"<start_of_turn>user\nWrite a short story about a lighthouse.<end_of_turn>\n"
                          b"<start_of_turn>model\n")
    times = []
    for _ in range(rounds):
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(n):
            tok = llm.sample(temp=0.0)
            llm.eval([tok])
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def token_pieces(model: Path, text: str) -> list[str]:
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=64, vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    pieces, buf = [], b""
    for t in ids:
        buf += llm.detokenize([t], special=True)
        try:
            pieces.append(buf.decode())
            buf = b""
        except UnicodeDecodeError:
            continue  # a character split over tokens: the worker's decoder waits too
    return pieces


def parse_cost(family: Any, pieces: list[str], rounds: int) -> tuple[float, float, int]:
    """(reader s/token, writer s/token, calls read) over ``rounds`` runs."""
    from turnout.protocol.chat import ChatRequest, Message, TextPart, ThinkingConfig, Tool
    from turnout.workers.formats import ToolSet
    from turnout.workers.formats.events import Call
    from turnout.workers.formats.render import Rendered
    from turnout.workers.tool_calls import AnswerWriter

    tools = [Tool("Write", "write a file", {"type": "object", "properties": {
        "file_path": {"type": "string"}, "content": {"type": "string"}}, "required": ["file_path", "content"]})]
    specs = [{"type": "function", "function": {"name": "Write", "parameters": tools[0].input_schema}}]
    req = ChatRequest(model="m", max_tokens=4096, tools=tools, thinking=ThinkingConfig("enabled", 4096),
                      messages=[Message("user", [TextPart("write it")])])
    rendered = Rendered("", ["<|im_end|>", "<end_of_turn>"], family, True, "", ToolSet(specs))
    reader_t, writer_t, calls = [], [], 0
    for _ in range(rounds):
        reader = family.new_reader(ToolSet(specs))
        t0 = time.perf_counter()
        events = []
        for p in pieces:
            events += reader.feed(p)
        events += reader.finish()
        reader_t.append((time.perf_counter() - t0) / len(pieces))
        calls = sum(isinstance(e, Call) for e in events)
        w = AnswerWriter("r", req, rendered)
        t0 = time.perf_counter()
        for p in pieces:
            w.feed(p)
        w.finish()
        writer_t.append((time.perf_counter() - t0) / len(pieces))
    return statistics.median(reader_t), statistics.median(writer_t), calls


def case_results() -> dict[str, dict[str, int]]:
    from turnout.workers import formats
    from turnout.workers.formats.events import Call, Text, Thinking

    cases = [json.loads(line) for line in (FIXTURES / "chat-formats" / "cases.jsonl").read_text().splitlines()]
    templates: dict[str, str] = {}
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"cases": 0, "passed": 0})

    def args_value(text: str) -> Any:
        # as tests/workers/formats/test_parse_cases.py: a partial call's arguments
        # (a JSON prefix) compare as their text without whitespace between tokens
        try:
            return json.loads(text)
        except ValueError:
            return re.sub(r'("(?:[^"\\]|\\.)*"?)|\s+', lambda m: m.group(1) or "", text)

    def read(c: dict[str, Any], fam: Any, chunks: list[str]) -> tuple[str, str, list[Any]]:
        r = fam.new_reader(formats.ToolSet(c["tools"] or []),
                           reasoning_open=formats.reasoning_open(fam, c["generation_prompt"]),
                           raw_reasoning=c["reasoning_format"] == "none", tools_enabled=bool(c["tools"]),
                           json_response=bool(c["json_schema"]))
        ev = [e for ch in chunks for e in r.feed(ch)] + (r.partial_calls() if c["is_partial"] else r.finish())
        return ("".join(e.text for e in ev if isinstance(e, Text)).strip(),
                "".join(e.text for e in ev if isinstance(e, Thinking)).strip(),
                [(e.name, args_value(e.arguments), e.id) for e in ev if isinstance(e, Call)])

    for c in cases:
        name = c["template"]
        if name not in templates:
            templates[name] = (FIXTURES / "chat-templates" / name).read_text()
        fam = formats.detect(templates[name])
        row = out[fam.name]
        row["cases"] += 1
        e = c["expect"]
        content, reasoning = e.get("content") or "", e.get("reasoning_content") or ""
        if c["continue_final_message"]:
            pre = c["messages"][-1]
            content = content.removeprefix(pre.get("content") or "")
            reasoning = reasoning.removeprefix(pre.get("reasoning_content") or "")
        want = (content.strip(), reasoning.strip(),
                [(t["function"]["name"], args_value(t["function"]["arguments"]), t.get("id", ""))
                 for t in e.get("tool_calls") or []])
        try:
            ok = read(c, fam, [c["input"]]) == want and read(c, fam, list(c["input"])) == want
        except Exception:
            ok = False
        row["passed"] += ok
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="3 rounds, results not written")
    args = p.parse_args()
    rounds = 3 if args.quick else args.rounds
    from turnout.workers import formats, models

    model = models.ensure_default_model(progress=False)
    gen = generation_s_per_token(model)
    rows: list[dict[str, Any]] = []
    for fam in formats.registry().values():
        if fam.forced_call is None:
            continue
        text = sample(fam)
        pieces = token_pieces(model, text)
        rt, wt, calls = parse_cost(fam, pieces, rounds)
        rows.append({"family": fam.name, "tokens": len(pieces), "calls_read": calls,
                     "reader_us_per_token": rt * 1e6, "writer_us_per_token": wt * 1e6,
                     "writer_share_of_generation": wt / gen})
    cases = case_results()
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "generation_ms_per_token": gen * 1e3, "rounds": rounds, "families": rows, "cases": cases}
    print(json.dumps(res, indent=2))
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "formats.json").write_text(json.dumps(res, indent=2) + "\n")
    total = sum(v["cases"] for v in cases.values())
    passed = sum(v["passed"] for v in cases.values())
    md = [f"# Chat formats: parse cost and llama.cpp's parser cases ({res['date']}, {res['machine']})", "",
          f"Generation (default model, llama.cpp in-process, greedy): **{gen * 1e3:.1f} ms per token**.", "",
          "| family | answer tokens | calls read | reader µs/token | writer µs/token | writer ÷ generation |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['family']} | {r['tokens']} | {r['calls_read']} | {r['reader_us_per_token']:.1f} | "
                  f"{r['writer_us_per_token']:.1f} | {r['writer_share_of_generation'] * 100:.3f}% |")
    md += ["", f"llama.cpp's test-chat.cpp parse cases passed (whole and one character at a time): "
               f"**{passed} of {total}** (a stream cut short, partial cases included: the calls in progress "
               "are the reader's partial calls).", "",
           "| family | cases | passed |", "|---|---|---|"]
    for name, v in sorted(cases.items()):
        md.append(f"| {name} | {v['cases']} | {v['passed']} |")
    md += ["", "Command: `.venv/bin/python -m turnout.bench.formats`", ""]
    (RESULTS / "formats.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
