"""The llama_cpp backend driven in-process, as the compute loop drives it, on a tiny
random-weight GGUF (fast) and, for the few ``slow`` tests, the real default model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import StubCtx

from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Message, ResponseFormat, TextPart, Tool, ToolChoice
from turnout.workers.base import BackendError, ModelLoadError, WorkerSpec
from turnout.workers.llama_cpp import LlamaBackend, create

LONG = " ".join(f"item{i} is here." for i in range(120))  # ~1500 tokens on the tiny vocab


def backend(path: Path | str, context_window: int = 0, **options: Any) -> LlamaBackend:
    options.setdefault("seed", 7)
    spec = WorkerSpec(
        id="w1", backend="llama_cpp", model="tiny", runtime_dir="/tmp", gateway_ids=[],
        path=str(path), context_window=context_window, options=options,
    )
    b = create(spec)
    b.load()
    return b


@pytest.fixture(scope="module")
def tiny(tiny_gguf: Path) -> LlamaBackend:
    return backend(tiny_gguf)


def request(text: str = "hello world", max_tokens: int = 24, **kw: Any) -> ChatRequest:
    kw.setdefault("temperature", 0.0)
    return ChatRequest(
        model="tiny", max_tokens=max_tokens, system=[TextPart("You are terse.")],
        messages=[Message("user", [TextPart(text)])], **kw,
    )


def run(b: LlamaBackend, req: ChatRequest, ctx: StubCtx | None = None) -> list[Any]:
    return list(b.generate("req-1", req, ctx or StubCtx()))


def text_of(msgs: list[Any]) -> str:
    return "".join(x.text for x in msgs if isinstance(x, m.TextDelta))


def test_stream_shape_and_usage(tiny: LlamaBackend) -> None:
    req = request(max_tokens=12)
    out = run(tiny, req)
    assert isinstance(out[0], m.Started) and isinstance(out[-1], m.Done)
    started, done = out[0], out[-1]
    n = tiny.count_tokens(req)
    assert started.input_tokens + started.cache_read_input_tokens == n
    assert done.usage.input_tokens == started.input_tokens
    assert done.usage.cache_read_input_tokens == started.cache_read_input_tokens
    assert done.stop_reason in ("max_tokens", "end_turn")
    if done.stop_reason == "max_tokens":
        assert done.usage.output_tokens == 12
    assert all(isinstance(x, m.Started | m.Ping | m.TextDelta | m.Done) for x in out)


def test_second_turn_reuses_the_kv_cache_and_answers_the_same(tiny: LlamaBackend) -> None:
    req = request("a question about caching")
    first = run(tiny, req)
    second = run(tiny, req)
    n = tiny.count_tokens(req)
    assert second[0].cache_read_input_tokens == n - 1  # all but the last prompt token
    assert second[0].input_tokens == 1
    assert text_of(second) == text_of(first)  # reuse must not change the answer


def test_checkpoints_bring_back_an_earlier_conversation(tiny_gguf: Path) -> None:
    b = backend(tiny_gguf)
    a, other = request("conversation A " + LONG), request("conversation B is different")
    fresh_a = text_of(run(b, a))
    run(b, other)  # the live cache now holds B
    again = run(b, a)
    assert again[0].cache_read_input_tokens == b.count_tokens(a) - 1
    assert text_of(again) == fresh_a
    assert len(b.cache) >= 2


def test_no_cache_without_capacity_still_reuses_live_prefix(tiny_gguf: Path) -> None:
    b = backend(tiny_gguf, cache_capacity_mb=0)
    req, other = request("x " + LONG), request("something else")
    run(b, req)
    run(b, other)
    a = b._tokenize(b._render(req).prompt)
    o = b._tokenize(b._render(other).prompt)
    shared = next(i for i, (x, y) in enumerate(zip(a, o, strict=False)) if x != y)
    assert 0 < shared < 40  # the system prompt and the start of the user turn
    assert run(b, req)[0].cache_read_input_tokens == shared
    assert len(b.cache) == 0


def test_count_tokens_uses_the_models_tokenizer(tiny: LlamaBackend) -> None:
    req = request("hello world")
    n = tiny.count_tokens(req)
    prompt = tiny._render(req).prompt
    assert n == len(tiny.llm.tokenize(prompt.encode(), add_bos=True, special=True))
    assert n != len(prompt.split())


def test_stop_sequence(tiny: LlamaBackend) -> None:
    base = text_of(run(tiny, request(max_tokens=30)))
    stop = base[8:10]
    assert len(base) > 12, base
    out = run(tiny, request(max_tokens=30, stop=[stop]))
    done = out[-1]
    assert done.stop_reason == "stop_sequence" and done.stop_sequence == stop
    assert text_of(out) == base[: base.index(stop)]


def test_context_overflow_is_raised_before_started(tiny_gguf: Path) -> None:
    b = backend(tiny_gguf, context_window=256)
    assert b.context_window == 256
    req = request(LONG)
    n = b.count_tokens(req)
    gen = b.generate("r", req, StubCtx())
    with pytest.raises(BackendError) as ei:
        next(gen)
    assert ei.value.kind == "context_overflow"
    assert ei.value.message == f"prompt is too long: {n} tokens > 255 maximum"


def test_output_is_capped_by_the_context_window(tiny_gguf: Path) -> None:
    b = backend(tiny_gguf, context_window=256)
    req = request("hi", max_tokens=1000, temperature=1.0)
    n = b.count_tokens(req)
    done = run(b, req)[-1]
    assert done.usage.output_tokens <= 256 - n


def test_an_answer_that_fills_the_window_ends_as_anthropics_api_ends_it(tiny_gguf: Path) -> None:
    """max_tokens beyond what the window leaves: the answer runs to the window and
    stops with model_context_window_exceeded (not a 400 before it starts)."""
    b = backend(tiny_gguf, context_window=256, seed=4)  # seed 4 writes no end of turn for 200+ tokens
    req = request(max_tokens=1000, temperature=1.0)
    n = b.count_tokens(req)
    out = run(b, req)
    assert isinstance(out[0], m.Started)
    assert out[-1].stop_reason == "model_context_window_exceeded"
    assert out[-1].usage.output_tokens == 256 - n
    # the same answer within max_tokens is an ordinary max_tokens stop
    short = run(b, request(max_tokens=256 - n, temperature=1.0))
    assert short[-1].stop_reason == "max_tokens" and short[-1].usage.output_tokens == 256 - n
    assert text_of(short) == text_of(out)


def test_a_base_model_gets_its_familys_end_of_turn_strings(tiny_gguf: Path, tiny_base_gguf: Path) -> None:
    b = backend(tiny_base_gguf)
    assert b.base_model and b._extra_stops == ["\n"]
    assert backend(tiny_base_gguf, stop=["END"])._extra_stops == ["END"]  # replaced
    assert backend(tiny_base_gguf, stop=[])._extra_stops == []  # turned off
    templated = backend(tiny_gguf)
    assert not templated.base_model and templated._extra_stops == []  # its template's EOG ends it


@pytest.mark.parametrize("seed", [1, 9])
def test_a_base_models_turn_ends_at_the_end_of_its_line(tiny_base_gguf: Path, seed: int) -> None:
    req = request(max_tokens=200, temperature=1.0)
    free = text_of(run(backend(tiny_base_gguf, stop=[], seed=seed), req))
    assert "\n" in free.lstrip("\n"), free  # this seed writes a line break
    out = run(backend(tiny_base_gguf, seed=seed), req)
    assert out[-1].stop_reason == "end_turn"
    assert text_of(out) == free.lstrip("\n").split("\n")[0] and text_of(out)


def test_cancel_during_decode(tiny: LlamaBackend) -> None:
    ctx = StubCtx()
    out = []
    for x in tiny.generate("r", request(max_tokens=200), ctx):
        out.append(x)
        if sum(isinstance(y, m.TextDelta) for y in out) == 3:
            ctx.cancel = True
    assert out[-1].stop_reason == "cancelled"
    assert out[-1].usage.output_tokens <= 4


class CancelInsidePrefill(StubCtx):
    """Cancelled on the first poll that comes from inside llama_decode (the abort
    callback), i.e. in the middle of a prefill chunk."""

    def __init__(self, backend: LlamaBackend) -> None:
        super().__init__()
        self.b = backend
        self.in_decode_polls = 0

    def cancelled(self) -> bool:
        if self.b._abort_ctx is self and not self.cancel:
            import inspect

            if any(f.function == "_on_abort_poll" for f in inspect.stack()[1:3]):
                self.in_decode_polls += 1
                self.cancel = True
        return super().cancelled()


def test_cancel_interrupts_prefill_inside_a_chunk(tiny_gguf: Path) -> None:
    b = backend(tiny_gguf, n_batch=2048, n_ubatch=2048)
    req = request("cancel me " + LONG)
    ctx = CancelInsidePrefill(b)
    out = list(b.generate("r", req, ctx))
    assert ctx.in_decode_polls == 1
    assert [type(x) for x in out] == [m.Started, m.Done]  # no chunk completed, no token
    assert out[-1].stop_reason == "cancelled"
    assert b.llm.n_tokens == 0
    # the model state is consistent afterwards: same answer as a fresh backend
    assert text_of(run(b, req)) == text_of(run(backend(tiny_gguf), req))


def test_pings_and_heartbeats_during_a_chunked_prefill(tiny_gguf: Path) -> None:
    b = backend(tiny_gguf, n_batch=64, n_ubatch=64)
    req = request(LONG, max_tokens=2)
    ctx = StubCtx()
    t = time.monotonic()
    out = run(b, req, ctx)
    n = b.count_tokens(req)
    pings = sum(isinstance(x, m.Ping) for x in out)
    assert pings >= n // 64 - 1
    assert isinstance(out[0], m.Started) and isinstance(out[1], m.Ping)
    assert ctx.polls >= pings  # cancel is checked at every chunk
    assert time.monotonic() - t < 30


SCHEMA_TOOL = Tool(
    name="Bash",
    description="Run a command",
    input_schema={
        "type": "object",
        "properties": {
            "command": {"type": "string", "maxLength": 12},
            "count": {"type": "integer"},
        },
        "required": ["command", "count"],
        "additionalProperties": False,
    },
)
OTHER_TOOL = Tool(name="Greet", input_schema={"type": "object", "properties": {"who": {"enum": ["héllo wörld", "ünïcode ✓"]}}, "required": ["who"]})


def calls_of(out: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    names = {x.index: x.name for x in out if isinstance(x, m.ToolCallStart)}
    args: dict[int, str] = {}
    for x in out:
        if isinstance(x, m.ToolArgsDelta):
            args[x.index] = args.get(x.index, "") + x.partial_json
    return [(names[i], json.loads(args[i])) for i in sorted(names)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forced_tool_call_is_valid_json_against_the_schema(tiny_gguf: Path, seed: int) -> None:
    b = backend(tiny_gguf, seed=seed)
    req = request("run it", max_tokens=200, temperature=1.0, tools=[SCHEMA_TOOL, OTHER_TOOL],
                  tool_choice=ToolChoice(type="tool", name="Bash"))
    out = run(b, req)
    calls = calls_of(out)
    assert len(calls) == 1 and calls[0][0] == "Bash"
    args = calls[0][1]
    assert set(args) == {"command", "count"}
    # (random weights write random bytes: maxLength counts code points, and
    # undecodable bytes come back as U+FFFD, so the length is not checked here)
    assert isinstance(args["command"], str)
    assert isinstance(args["count"], int)
    assert out[-1].stop_reason == "tool_use"
    assert not [x for x in out if isinstance(x, m.TextDelta) and x.text.strip()]


def test_tool_choice_any_picks_one_of_the_tools_and_keeps_utf8_whole(tiny_gguf: Path) -> None:
    b = backend(tiny_gguf, seed=5)
    req = request("greet", max_tokens=200, temperature=1.0, tools=[OTHER_TOOL], tool_choice=ToolChoice(type="any"))
    out = run(b, req)
    (name, args), = calls_of(out)
    assert name == "Greet" and args["who"] in ("héllo wörld", "ünïcode ✓")  # multi-byte split over byte tokens
    assert out[-1].stop_reason == "tool_use"


ANSWER_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"},
                                                 "tag": {"enum": ["red", "green"]}},
                 "required": ["ok", "n", "tag"], "additionalProperties": False}


def test_a_blank_end_of_turn_string_does_not_end_a_turn_before_it_begins(tiny_base_gguf: Path) -> None:
    req = request(max_tokens=40, temperature=1.0)
    free = text_of(run(backend(tiny_base_gguf, stop=[], seed=61), req))
    assert free.startswith(" ") and free.strip(), free  # this seed's answer starts with a blank
    out = run(backend(tiny_base_gguf, stop=[" "], seed=61), req)
    assert text_of(out) == free.lstrip().split(" ")[0] and out[-1].stop_reason == "end_turn"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_end_of_turn_strings_never_cut_a_forced_call_or_a_structured_answer(tiny_base_gguf: Path, seed: int) -> None:
    """A base model's end-of-turn strings (its defaults or ``stop``) do not apply
    inside grammar-held JSON: here ":", which every such object holds. (The default
    "\n" cannot occur there today: llama-cpp-python's schema grammar writes no raw
    line break.)"""
    b = backend(tiny_base_gguf, seed=seed, stop=[":"])
    out = run(b, request("run it", max_tokens=300, temperature=1.0, tools=[SCHEMA_TOOL],
                         tool_choice=ToolChoice(type="tool", name="Bash")))
    ((name, args),) = calls_of(out)
    assert name == "Bash" and set(args) == {"command", "count"} and out[-1].stop_reason == "tool_use"
    out = run(b, request("answer", max_tokens=300, temperature=1.0,
                         response_format=ResponseFormat("json_schema", ANSWER_SCHEMA, "answer")))
    assert set(json.loads(text_of(out))) == {"ok", "n", "tag"} and out[-1].stop_reason == "end_turn"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_structured_output_matches_the_schema(tiny_gguf: Path, seed: int) -> None:
    """response_format json_schema: even random weights answer with exactly one
    object of the schema (the grammar holds them to it), and the turn ends there."""
    b = backend(tiny_gguf, seed=seed)
    out = run(b, request("answer", max_tokens=200, temperature=1.0,
                         response_format=ResponseFormat("json_schema", ANSWER_SCHEMA, "answer")))
    answer = json.loads(text_of(out))
    assert set(answer) == {"ok", "n", "tag"} and isinstance(answer["ok"], bool)
    assert isinstance(answer["n"], int) and answer["tag"] in ("red", "green")
    assert out[-1].stop_reason == "end_turn"


def test_forcing_an_unknown_tool_is_a_bad_request(tiny: LlamaBackend) -> None:
    req = request(tools=[SCHEMA_TOOL], tool_choice=ToolChoice(type="tool", name="Nope"))
    with pytest.raises(BackendError) as ei:
        next(tiny.generate("r", req, StubCtx()))
    assert ei.value.kind == "invalid_request"


def test_bad_model_path_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model file"):
        backend(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError):
        backend(junk)


def test_unknown_option_is_a_load_error(tiny_gguf: Path) -> None:
    with pytest.raises(ModelLoadError, match="n_thread"):
        create(WorkerSpec(id="w", backend="llama_cpp", model="t", runtime_dir="/tmp", gateway_ids=[],
                          path=str(tiny_gguf), options={"n_thread": 2}))


def test_context_window_is_pinned_from_gguf_and_option(tiny_gguf: Path) -> None:
    assert backend(tiny_gguf).context_window == 2048
    assert backend(tiny_gguf, n_ctx=512).context_window == 512
    assert backend(tiny_gguf, context_window=99999).context_window == 2048  # capped at training ctx


# ---------------------------------------------------------------- real default model


@pytest.fixture(scope="module")
def gemma(default_model: Path) -> LlamaBackend:
    return backend("", n_ctx=8192)  # empty path: the default model


@pytest.mark.slow
def test_default_model_second_turn_reuses_the_prefix(gemma: LlamaBackend) -> None:
    """Gemma 3 has sliding-window layers: the live cache cannot rewind, so the
    second turn comes back through a checkpoint; its answer must match a cold run."""
    turn1 = request("Tell me about cats. " + " ".join(f"Fact {i}: cats are nice." for i in range(150)), max_tokens=16)
    out1 = run(gemma, turn1)
    reply = text_of(out1)
    turn2 = ChatRequest(model="m", max_tokens=16, temperature=0.0, system=turn1.system, messages=[
        *turn1.messages, Message("assistant", [TextPart(reply)]), Message("user", [TextPart("And dogs?")])])
    t = time.monotonic()
    out2 = run(gemma, turn2)
    warm = time.monotonic() - t
    n1 = gemma.count_tokens(turn1)
    assert out2[0].cache_read_input_tokens >= n1 - 1
    cold = backend("", n_ctx=8192)
    t = time.monotonic()
    assert text_of(run(cold, turn2)) == text_of(out2)
    assert warm < (time.monotonic() - t) * 0.5


@pytest.mark.slow
def test_default_model_forced_tool_call_on_claude_code_request(gemma: LlamaBackend) -> None:
    from conftest import claude_code_request

    req = claude_code_request("03-tool-bash-request-2.json")
    req.tools = [t for t in req.tools if t.name == "Bash"]  # keep the prompt ~3k tokens
    req.tool_choice = ToolChoice(type="tool", name="Bash")
    req.max_tokens = 120
    req.temperature = 0.0
    out = run(gemma, req)
    (name, args), = calls_of(out)
    assert name == "Bash" and isinstance(args.get("command"), str)
    assert not text_of(out)  # the call's JSON is never answer text, even cut off
    # this base model copies the tool's long description into "description" and
    # is cut by max_tokens: the call keeps its finished arguments only (as Anthropic
    # returns a tool_use block cut by max_tokens), and says it was cut
    assert out[-1].stop_reason in ("tool_use", "max_tokens")
    if out[-1].stop_reason == "max_tokens":
        assert "description" not in args


@pytest.mark.slow
def test_default_model_structured_output(gemma: LlamaBackend) -> None:
    """The real model answers with the schema's object. (JSON mode without a schema
    is held to an object too, but this 270M base model then loops inventing keys.)"""
    schema = {"type": "object", "properties": {"animal": {"type": "string", "maxLength": 20},
                                               "legs": {"type": "integer"}},
              "required": ["animal", "legs"], "additionalProperties": False}
    out = run(gemma, request("A cat: what is it and how many legs?", max_tokens=80,
                             response_format=ResponseFormat("json_schema", schema, "animal")))
    answer = json.loads(text_of(out))
    assert set(answer) == {"animal", "legs"} and isinstance(answer["legs"], int), answer
