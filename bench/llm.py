"""The default model served three ways, side by side: turnout vs llama-cpp-python
in-process vs ``python -m llama_cpp.server`` (issue 3).

Run:  .venv/bin/python -m turnout.bench.llm [--runs N] [--quick]
Writes bench/results/llm.json and bench/results/llm.md (not with --quick).

Systems (all on the default model, Gemma 3 270M Q4_K_M, the same GGUF file):

* **turnout**: ``turnout up`` (supervisor, gateway, llama_cpp worker), streaming
  ``/v1/messages`` over HTTP; the worker's own defaults (n_ctx 32768, threads =
  cores, n_batch 512).
* **in-process**: ``llama_cpp.Llama`` in this process with the same n_ctx, threads
  and batch, ``create_completion(stream=True)``: what an application embedding
  llama-cpp-python gets.
* **llama_cpp.server**: the peer, started with the same n_ctx/threads/batch and
  ``--logits_all false`` (its default, true, doubles prefill: MEASURED.md); its other
  defaults are kept (no prompt-cache object; the Llama object's own prefix reuse).

Every system gets the same tokens: the prompt is rendered once with turnout's Gemma
template and sent as text to the two peers (``/v1/completions``, ``create_completion``),
and as the equivalent Messages request to turnout. Greedy sampling, so all three
write the same answer.

Per run (systems interleaved, rotating the order each run, so machine noise hits
all alike): turn 1 is a fresh ~2k-token user turn (unique per run: no cache hit);
turn 2 is the same conversation plus a fixed assistant reply and a short new user
message. Measured: TTFT (request sent -> first text), decode tokens/s (answer
tokens after the first / time from first to last text; tokens counted with the
model's tokenizer on the answer text, the same way for all three), turn 2's TTFT as
a fraction of turn 1's, and the RSS of each process holding the model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker sets it (MEASURED.md)

import psutil

from turnout.bench.stats import summary
from turnout.protocol.chat import ChatRequest, Message, TextPart
from turnout.supervisor.launch import TurnoutProcess, free_port
from turnout.workers import chat_templates as ct
from turnout.workers import models

RESULTS = Path(__file__).resolve().parent / "results"
N_CTX = 32768
N_BATCH = 512
REPLY = "Sure. Here is a short summary of the notes above."
FOLLOW_UP = "Thanks. Which note mentions the harbour?"

CONFIG = """
[server]
worker_wait_s = 60.0

[[models]]
name = "gemma3-270m"
backend = "llama_cpp"
aliases = ["claude-*"]
"""

_TOPICS = ["the harbour", "a mountain village", "the old library", "a night train", "the market square",
           "a lighthouse keeper", "the river delta", "a glass workshop", "the winter festival", "a desert road"]


def long_text(run: int, sentences: int) -> str:
    """A unique (per run) user turn of plain prose notes."""
    out = [f"Notes, set {run}. Read them and continue the story in your own words."]
    for i in range(sentences):
        t = _TOPICS[(i * 7 + run) % len(_TOPICS)]
        out.append(f"Note {i}: on day {i + run} the visitor walked to {t} and wrote down what changed there.")
    return " ".join(out)


def conversation(run: int, sentences: int, turn: int) -> ChatRequest:
    msgs = [Message("user", [TextPart(long_text(run, sentences))])]
    if turn == 2:
        msgs += [Message("assistant", [TextPart(REPLY)]), Message("user", [TextPart(FOLLOW_UP)])]
    return ChatRequest(model="gemma3-270m", max_tokens=0, messages=msgs, temperature=0.0)


def anthropic_body(req: ChatRequest, max_tokens: int) -> bytes:
    return json.dumps({
        "model": req.model, "max_tokens": max_tokens, "stream": True, "temperature": 0.0,
        "messages": [{"role": mm.role, "content": "".join(p.text for p in mm.content if isinstance(p, TextPart))}
                     for mm in req.messages],
    }).encode()


class Result:
    def __init__(self) -> None:
        self.t_first = 0.0
        self.t_last = 0.0
        self.text = ""


def _sse_lines(resp: Any) -> Any:
    """(event, data) pairs of an SSE response, as they arrive (urllib reads lines)."""
    event = ""
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, line[6:]
            event = ""


def run_turnout(t: TurnoutProcess, req: ChatRequest, max_tokens: int) -> tuple[Result, float, dict[str, Any]]:
    r = Result()
    usage: dict[str, Any] = {}
    http = urllib.request.Request(t.base_url + "/v1/messages", data=anthropic_body(req, max_tokens), headers={
        "x-api-key": t.token, "content-type": "application/json", "anthropic-version": "2023-06-01"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(http, timeout=600) as resp:
        for ev, data in _sse_lines(resp):
            if ev == "content_block_delta":
                d = json.loads(data)["delta"]
                if d.get("text"):
                    now = time.perf_counter()
                    r.t_first = r.t_first or now
                    r.t_last = now
                    r.text += d["text"]
            elif ev == "message_start":
                usage["start"] = json.loads(data)["message"]["usage"]
            elif ev == "message_delta":
                usage["end"] = json.loads(data)["usage"]
            elif ev == "error":
                raise RuntimeError(data)
    return r, t0, usage


def run_inprocess(llm: Any, prompt: str, max_tokens: int) -> tuple[Result, float]:
    r = Result()
    t0 = time.perf_counter()
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
                                       stop=["<end_of_turn>", "<start_of_turn>"]):
        text = chunk["choices"][0]["text"]
        if text:
            now = time.perf_counter()
            r.t_first = r.t_first or now
            r.t_last = now
            r.text += text
    return r, t0


def run_server(url: str, prompt: str, max_tokens: int) -> tuple[Result, float]:
    r = Result()
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                       "stop": ["<end_of_turn>", "<start_of_turn>"]}).encode()
    http = urllib.request.Request(url + "/v1/completions", data=body, headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(http, timeout=600) as resp:
        for _, data in _sse_lines(resp):
            if data.strip() == "[DONE]":
                break
            text = json.loads(data)["choices"][0]["text"]
            if text:
                now = time.perf_counter()
                r.t_first = r.t_first or now
                r.t_last = now
                r.text += text
    return r, t0


def start_server(path: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--n_ctx", str(N_CTX),
         "--n_batch", str(N_BATCH), "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--logits_all", "false", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("llama_cpp.server did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--sentences", type=int, default=90, help="~22 tokens each: sets the ~2k prompt")
    p.add_argument("--quick", action="store_true", help="2 runs, results not written")
    args = p.parse_args()
    if args.quick:
        args.runs = 2
    threads = os.cpu_count() or 1
    path = models.ensure_default_model()

    from llama_cpp import Llama

    info = ct.detect("", "gemma3")  # the default GGUF has no template: turnout's Gemma one
    proc_self = psutil.Process()
    rss_before = proc_self.memory_info().rss
    llm = Llama(str(path), n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    rss_inproc = proc_self.memory_info().rss - rss_before

    def tokens(text: str) -> int:
        return len(llm.tokenize(text.encode(), add_bos=False, special=True))

    server, url = start_server(path, threads)
    t = TurnoutProcess(CONFIG, env={"TURNOUT_LOG_LEVEL": "warning", "OMP_WAIT_POLICY": "PASSIVE"})
    t.start(timeout=120)
    systems = ["turnout", "inprocess", "server"]
    samples: dict[str, dict[str, list[float]]] = {s: {"ttft1": [], "ttft2": [], "tps": [], "ratio": []} for s in systems}
    texts: dict[str, list[str]] = {s: [] for s in systems}
    usage_log: list[dict[str, Any]] = []
    prompt_tokens = 0
    try:
        # Warm-up: one short request each (first-use costs are not what is measured).
        warm = ChatRequest(model="gemma3-270m", max_tokens=0, messages=[Message("user", [TextPart("Hello.")])])
        run_turnout(t, warm, 4)
        run_inprocess(llm, ct.render(warm, info).prompt, 4)
        run_server(url, ct.render(warm, info).prompt, 4)
        for run in range(args.runs):
            order = systems[run % 3:] + systems[: run % 3]
            for s in order:
                ttft = []
                for turn in (1, 2):
                    req = conversation(run, args.sentences, turn)
                    prompt = ct.render(req, info).prompt
                    if turn == 1:
                        prompt_tokens = len(llm.tokenize(prompt.encode(), add_bos=True, special=True))
                    if s == "turnout":
                        r, t0, usage = run_turnout(t, req, args.max_tokens)
                        usage_log.append({"run": run, "turn": turn, **usage})
                    elif s == "inprocess":
                        r, t0 = run_inprocess(llm, prompt, args.max_tokens)
                    else:
                        r, t0 = run_server(url, prompt, args.max_tokens)
                    if not r.t_first:
                        raise RuntimeError(f"{s} run {run} turn {turn}: no text")
                    ttft.append(r.t_first - t0)
                    if turn == 1:
                        n = tokens(r.text)
                        if n > 1 and r.t_last > r.t_first:
                            samples[s]["tps"].append((n - 1) / (r.t_last - r.t_first))
                        texts[s].append(r.text)
                    print(f"run {run} {s:9s} turn {turn}: ttft {ttft[-1]:.3f}s answer {tokens(r.text)} tokens",
                          flush=True)
                samples[s]["ttft1"].append(ttft[0])
                samples[s]["ttft2"].append(ttft[1])
                samples[s]["ratio"].append(ttft[1] / ttft[0])
        pids = t.worker_pids()
        worker_rss = psutil.Process(next(iter(pids.values()))).memory_info().rss
        server_rss = psutil.Process(server.pid).memory_info().rss
    finally:
        t.stop()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    res: dict[str, Any] = {
        "command": " ".join(["python -m turnout.bench.llm", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "model": str(path.name), "n_ctx": N_CTX, "n_batch": N_BATCH, "threads": threads,
        "prompt_tokens": prompt_tokens, "max_tokens": args.max_tokens, "runs": args.runs,
        "systems": {s: {k: summary(v) for k, v in samples[s].items()} for s in systems},
        "samples": samples,
        "same_answers": texts["turnout"] == texts["inprocess"] == texts["server"],
        "rss_mb": {"turnout_worker": round(worker_rss / 2**20), "llama_cpp_server": round(server_rss / 2**20),
                   "inprocess_model_delta": round(rss_inproc / 2**20)},
        "turnout_usage": usage_log,
    }
    sy = res["systems"]
    dec = sy["turnout"]["tps"]["p50"] / sy["inprocess"]["tps"]["p50"]
    ttft = sy["turnout"]["ttft1"]["p50"] / sy["inprocess"]["ttft1"]["p50"]
    ratio = sy["turnout"]["ratio"]["p50"]
    res["targets"] = {
        "decode_vs_inprocess": {"value": round(dec, 4), "target": ">= 0.97", "met": dec >= 0.97},
        "ttft_vs_inprocess": {"value": round(ttft, 4), "target": "<= 1.05", "met": ttft <= 1.05},
        "second_turn_ttft_fraction": {"value": round(ratio, 4), "target": "< 0.15", "met": ratio < 0.15},
    }
    print(json.dumps(res, indent=2))
    if not args.quick:
        write_results(res)
    return 0


def write_results(res: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm.json").write_text(json.dumps(res, indent=2) + "\n")
    sy, tg = res["systems"], res["targets"]

    def row(name: str, key: str) -> str:
        s = sy[key]
        return (f"| {name} | {s['ttft1']['p50']:.3f} ({s['ttft1']['mean']:.3f}) | {s['tps']['p50']:.1f} "
                f"({s['tps']['mean']:.1f}) | {s['ttft2']['p50']:.3f} | {s['ratio']['p50']:.3f} |")

    def yes(k: str) -> str:
        return "yes" if tg[k]["met"] else "**no**"

    md = f"""# Local LLM: turnout vs llama-cpp-python in-process vs llama_cpp.server

Command: `{res['command']}`  
Date: {res['date']} · machine: {res['machine']}  
Model: {res['model']} · n_ctx {res['n_ctx']} · n_batch {res['n_batch']} · {res['threads']} threads (all three) ·
prompt {res['prompt_tokens']} tokens · answers of up to {res['max_tokens']} tokens, greedy ·
{res['runs']} runs, systems interleaved · same answers from all three: {res['same_answers']}

| system | turn 1 TTFT p50 (mean) (s) | decode tok/s p50 (mean) | turn 2 TTFT p50 (s) | turn 2 / turn 1 TTFT p50 |
|---|---|---|---|---|
{row('turnout (HTTP, gateway, worker)', 'turnout')}
{row('llama-cpp-python in-process', 'inprocess')}
{row('llama_cpp.server (--logits_all false)', 'server')}

| target | value | met |
|---|---|---|
| turnout decode tok/s ÷ in-process | {tg['decode_vs_inprocess']['value']} (≥ 0.97) | {yes('decode_vs_inprocess')} |
| turnout TTFT ÷ in-process | {tg['ttft_vs_inprocess']['value']} (≤ 1.05) | {yes('ttft_vs_inprocess')} |
| turnout turn 2 TTFT ÷ turn 1 | {tg['second_turn_ttft_fraction']['value']} (< 0.15) | {yes('second_turn_ttft_fraction')} |

RSS with the default model loaded: turnout worker {res['rss_mb']['turnout_worker']} MB ·
llama_cpp.server {res['rss_mb']['llama_cpp_server']} MB · in-process model
+{res['rss_mb']['inprocess_model_delta']} MB (the peers keep a full-size sliding-window KV
cache, llama-cpp-python's default; turnout keeps the window and checkpoints instead).

The host is shared with other jobs: a cold 2k prefill took anywhere from ~6.6 s to
~18 s within this one run, so with few runs the TTFT p50s differ by noise, not by
system; compare the means too (per-run samples are in llm.json from the next run on).
"""
    (RESULTS / "llm.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
