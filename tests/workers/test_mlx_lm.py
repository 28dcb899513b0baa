"""The mlx_lm backend driven in-process, as the compute loop drives it, on a tiny
random-weight MLX model written by a fixture (tiny_mlx.py); and once through a real
turnout (worker process, gateway, HTTP)."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx.core", reason="mlx cannot be imported on this platform (pip install 'turnout[mlx]')")
pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'turnout[mlx]')")

from conftest import StubCtx

sys.path.insert(0, str(Path(__file__).parent))
from tiny_mlx import write_tiny_mlx

from turnout.protocol import messages as m
from turnout.protocol.chat import (
    ChatRequest,
    Message,
    ResponseFormat,
    TextPart,
    ThinkingConfig,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from turnout.supervisor.launch import TurnoutProcess
from turnout.workers.base import BackendError, ModelLoadError, WorkerSpec
from turnout.workers.mlx_lm import MlxBackend, create
from turnout.workers.signing import Signer, load_key

LONG = " ".join(f"item{i} is here." for i in range(60))  # ~1000 byte-level tokens


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mlx(tmp_path_factory.mktemp("mlx") / "tiny")


def backend(path: Path | str, context_window: int = 0, **options: Any) -> MlxBackend:
    options.setdefault("seed", 7)
    spec = WorkerSpec(id="w1", backend="mlx_lm", model="tiny", runtime_dir="/tmp", gateway_ids=[],
                      path=str(path), context_window=context_window, options=options)
    b = create(spec)
    b.load()
    return b


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> MlxBackend:
    return backend(tiny_dir)


def request(text: str = "hello world", max_tokens: int = 24, **kw: Any) -> ChatRequest:
    kw.setdefault("temperature", 0.0)
    return ChatRequest(model="tiny", max_tokens=max_tokens, system=[TextPart("You are terse.")],
                       messages=[Message("user", [TextPart(text)])], **kw)


def run(b: MlxBackend, req: ChatRequest, ctx: StubCtx | None = None) -> list[Any]:
    return list(b.generate("req-1", req, ctx or StubCtx()))


def text_of(msgs: list[Any]) -> str:
    return "".join(x.text for x in msgs if isinstance(x, m.TextDelta))


# ---------------------------------------------------------------- stream, usage, tokens


def test_stream_shape_and_usage(tiny: MlxBackend) -> None:
    req = request(max_tokens=12)
    out = run(tiny, req)
    assert isinstance(out[0], m.Started) and isinstance(out[-1], m.Done)
    started, done = out[0], out[-1]
    assert started.input_tokens + started.cache_read_input_tokens == tiny.count_tokens(req)
    assert done.usage.input_tokens == started.input_tokens
    assert done.stop_reason in ("max_tokens", "end_turn")
    assert 0 < done.usage.output_tokens <= 12
    if done.stop_reason == "max_tokens":
        assert done.usage.output_tokens == 12
    assert text_of(out)
    assert all(isinstance(x, m.Started | m.Ping | m.TextDelta | m.Done) for x in out)


def test_max_tokens_is_honoured(tiny: MlxBackend) -> None:
    out = run(tiny, request(max_tokens=5, temperature=1.0))
    assert out[-1].usage.output_tokens <= 5
    assert sum(isinstance(x, m.TextDelta) for x in out) <= 5


def test_count_tokens_uses_the_models_tokenizer(tiny: MlxBackend) -> None:
    req = request("hello wörld")
    prompt = tiny._render(req).prompt
    n = tiny.count_tokens(req)
    assert n == len(tiny.tokenizer.encode(prompt, add_special_tokens=True))
    assert n > len(prompt.split()) * 3  # a byte-level vocab: about one token per byte


def test_chat_template_comes_from_the_tokenizer(tmp_path: Path) -> None:
    marked = "{% for message in messages %}[[{{ message['role'] }}]]{{ message['content'] }}{% endfor %}[[assistant]]"
    b = backend(write_tiny_mlx(tmp_path / "marked", chat_template=marked))
    prompt = b._render(request("hi")).prompt
    assert prompt == "[[system]]You are terse.[[user]]hi[[assistant]]"
    assert b.template is not None and b.template.chat_format == "gguf"  # the model's own template


def test_no_tokenizer_template_falls_back_to_the_family_template(tmp_path: Path) -> None:
    b = backend(write_tiny_mlx(tmp_path / "plain", chat_template=None))
    assert b.template is not None and b.template.chat_format == "chatml"
    assert b._render(request("hi")).prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_context_overflow_is_raised_before_started(tiny_dir: Path) -> None:
    b = backend(tiny_dir, context_window=256)
    req = request(LONG)
    n = b.count_tokens(req)
    with pytest.raises(BackendError) as ei:
        next(b.generate("r", req, StubCtx()))
    assert ei.value.kind == "context_overflow"
    assert ei.value.message == f"prompt is too long: {n} tokens > 255 maximum"


def test_context_window_from_config_and_options(tiny_dir: Path) -> None:
    assert backend(tiny_dir).context_window == 2048
    assert backend(tiny_dir, n_ctx=512).context_window == 512
    assert backend(tiny_dir, context_window=99999).context_window == 2048  # capped at training ctx


# ---------------------------------------------------------------- prompt cache


def test_second_turn_reuses_the_kv_cache_and_answers_the_same(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    req = request("a question about caching")
    first = run(b, req)
    second = run(b, req)
    n = b.count_tokens(req)
    assert first[0].cache_read_input_tokens == 0
    assert second[0].cache_read_input_tokens == n - 1  # all but the last prompt token
    assert second[-1].usage.input_tokens == 1
    assert text_of(second) == text_of(first)  # reuse must not change the answer


def test_a_follow_up_turn_reuses_the_conversation_prefix(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    turn1 = request("first question " + LONG, max_tokens=8)
    reply = text_of(run(b, turn1))
    turn2 = ChatRequest(model="tiny", max_tokens=8, temperature=0.0, system=turn1.system, messages=[
        *turn1.messages, Message("assistant", [TextPart(reply)]), Message("user", [TextPart("and then?")])])
    out = run(b, turn2)
    assert out[0].cache_read_input_tokens >= b.count_tokens(turn1) - 1
    assert text_of(out) == text_of(run(backend(tiny_dir), turn2))  # same as a cold run


def test_an_earlier_conversation_comes_back_from_the_store(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    a, other = request("conversation A " + LONG), request("conversation B is different")
    fresh_a = text_of(run(b, a))
    run(b, other)  # the live cache now holds B; A was stashed
    assert len(b.kv) >= 1  # type: ignore[arg-type]
    again = run(b, a)
    assert again[0].cache_read_input_tokens == b.count_tokens(a) - 1
    assert text_of(again) == fresh_a


def test_without_a_store_only_the_shared_prefix_is_reused(tiny_dir: Path) -> None:
    b = backend(tiny_dir, cache_entries=0)
    a, other = request("x " + LONG), request("something else")
    run(b, a)
    run(b, other)
    ta, to = b._tokenize(b._render(a).prompt), b._tokenize(b._render(other).prompt)
    shared = next(i for i, (x, y) in enumerate(zip(ta, to, strict=False)) if x != y)
    assert 0 < shared < 60  # the system prompt and the start of the user turn
    assert run(b, a)[0].cache_read_input_tokens == shared
    assert len(b.kv) == 0  # type: ignore[arg-type]


# ---------------------------------------------------------------- cancel, pings


def test_cancel_during_decode(tiny: MlxBackend) -> None:
    ctx = StubCtx()
    out = []
    for x in tiny.generate("r", request(max_tokens=200, temperature=1.0, stop=["\x00never"]), ctx):
        out.append(x)
        if sum(isinstance(y, m.TextDelta) for y in out) == 3:
            ctx.cancel = True
    assert out[-1].stop_reason == "cancelled", out[-1]
    assert out[-1].usage.output_tokens <= 5


def test_cancel_between_prefill_steps_leaves_a_consistent_cache(tiny_dir: Path) -> None:
    b = backend(tiny_dir, prefill_step=64)
    req = request("cancel me " + LONG)
    ctx = StubCtx(cancel_after_heartbeats=1)  # a Cancel arrives during the second step
    out = list(b.generate("r", req, ctx))
    assert out[-1].stop_reason == "cancelled"
    assert not any(isinstance(x, m.TextDelta) for x in out)
    assert b.kv is not None and len(b.kv.live_tokens) == 128  # exactly what was evaluated
    again = run(b, req)
    assert again[0].cache_read_input_tokens == 128  # the partial prefill is reused
    assert text_of(again) == text_of(run(backend(tiny_dir), req))


def test_pings_and_heartbeats_during_a_chunked_prefill(tiny_dir: Path) -> None:
    b = backend(tiny_dir, prefill_step=64)
    req = request(LONG, max_tokens=2)
    ctx = StubCtx()
    out = run(b, req, ctx)
    n = b.count_tokens(req)
    pings = sum(isinstance(x, m.Ping) for x in out)
    assert pings == -(-(n - 1) // 64)  # one per step
    assert ctx.heartbeats >= pings  # one per prefill step (and per decoded token)
    assert isinstance(out[0], m.Started) and isinstance(out[1], m.Ping)
    assert ctx.polls > pings  # cancel is checked at every step


# ---------------------------------------------------------------- scripted output


class Scripted:
    """The real tiny model (so the KV cache is filled as usual) whose next-token
    choice is taken from ``script``: makes what the model "writes" deterministic,
    to test parsing on the real decode loop."""

    def __init__(self, model: Any, script: list[int]) -> None:
        self.model = model
        self.script = script
        self.k = 0

    def __call__(self, x: Any, cache: Any = None) -> Any:
        import mlx.core as mx

        logits = self.model(x, cache=cache)
        if x.shape[1] != 1:  # a prefill step: its logits are not used
            return logits
        tok = self.script[min(self.k, len(self.script) - 1)]
        self.k += 1
        onehot = mx.where(mx.arange(logits.shape[-1]) == tok, 0.0, -1e9)
        return mx.broadcast_to(onehot, logits.shape)


def scripted(b: MlxBackend, text: str) -> None:
    ids = b.tokenizer.encode(text, add_special_tokens=False)
    b.model = Scripted(b.model.model if isinstance(b.model, Scripted) else b.model, [*ids, *b._eos])


BASH = Tool(name="Bash", description="Run a command", input_schema={
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]})


def calls_of(out: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    names = {x.index: x.name for x in out if isinstance(x, m.ToolCallStart)}
    args: dict[int, str] = {}
    for x in out:
        if isinstance(x, m.ToolArgsDelta):
            args[x.index] = args.get(x.index, "") + x.partial_json
    return [(names[i], json.loads(args[i])) for i in sorted(names)]


def test_a_hermes_tool_call_streams_as_a_tool_use_block(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    scripted(b, 'Let me look.<tool_call>\n{"name": "Bash", "arguments": {"command": "ls -l"}}\n</tool_call>')
    out = run(b, request("list files", max_tokens=200, tools=[BASH]))
    assert text_of(out) == "Let me look."
    assert calls_of(out) == [("Bash", {"command": "ls -l"})]
    assert out[-1].stop_reason == "tool_use"


def test_forced_tool_choice_writes_the_call_start_into_the_prompt(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    scripted(b, '{"command": "pwd"}}\n</tool_call>')  # what follows the forced start
    req = request("where am I", max_tokens=200, tools=[BASH], tool_choice=ToolChoice(type="tool", name="Bash"))
    out = run(b, req)
    assert calls_of(out) == [("Bash", {"command": "pwd"})]
    assert out[-1].stop_reason == "tool_use"
    assert b.count_tokens(req) < out[0].input_tokens  # the call's start is in the prompt


def test_force_tool_option_forces_only_a_fresh_user_turn(tiny_dir: Path) -> None:
    b = backend(tiny_dir, force_tool="Bash")
    scripted(b, '{"command": "echo hi"}}\n</tool_call>')
    first = run(b, request("say hi", max_tokens=100, tools=[BASH]))
    assert calls_of(first) == [("Bash", {"command": "echo hi"})]
    # After the tool result the model answers freely: no call is forced.
    scripted(b, "done")
    call_id = next(x.id for x in first if isinstance(x, m.ToolCallStart))
    follow = ChatRequest(model="tiny", max_tokens=100, temperature=0.0, tools=[BASH], messages=[
        Message("user", [TextPart("say hi")]),
        Message("assistant", [ToolUsePart(call_id, "Bash", {"command": "echo hi"})]),
        Message("user", [ToolResultPart(call_id, [TextPart("hi")])])])
    out = run(b, follow)
    assert text_of(out) == "done" and out[-1].stop_reason == "end_turn"


def test_stop_sequence(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    scripted(b, "Hello there, general Kenobi. You are a bold one.")
    out = run(b, request(max_tokens=100, stop=["Ken", "xyz"]))
    assert out[-1].stop_reason == "stop_sequence" and out[-1].stop_sequence == "Ken"
    assert text_of(out) == "Hello there, general "


def test_the_templates_end_of_turn_string_ends_the_answer(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    scripted(b, "Short answer.<|im_start|>user\nmore")  # a base model writing the next turn
    out = run(b, request(max_tokens=100))
    assert text_of(out) == "Short answer." and out[-1].stop_reason == "end_turn"


def test_max_tokens_stops_a_scripted_answer(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    scripted(b, "abcdefghijklmnopqrstuvwxyz")
    out = run(b, request(max_tokens=5))
    assert text_of(out) == "abcde"
    assert out[-1].stop_reason == "max_tokens" and out[-1].usage.output_tokens == 5


def test_a_base_models_turn_ends_at_its_default_line_break(tmp_path: Path) -> None:
    base = write_tiny_mlx(tmp_path / "base", chat_template=None)
    b = backend(base)
    scripted(b, "One line.\nthen the model goes on")
    out = run(b, request(max_tokens=100))
    assert text_of(out) == "One line." and out[-1].stop_reason == "end_turn"
    off = backend(base, stop=[])  # defaults off: the line break is text
    scripted(off, "One line.\nthen")
    assert text_of(run(off, request(max_tokens=100))) == "One line.\nthen"
    scripted(b, "\n \nHello.\nmore")  # blank lines before the answer do not end it
    assert text_of(run(b, request(max_tokens=100))) == "Hello."
    scripted(b, '{"ok":\n true}\n')  # a structured answer is not cut at its line breaks
    out = run(b, request(max_tokens=100, response_format=ResponseFormat("json_object")))
    assert json.loads(text_of(out)) == {"ok": True}


def test_an_answer_that_fills_the_window_ends_with_model_context_window_exceeded(tiny_dir: Path) -> None:
    b = backend(tiny_dir, context_window=256)
    n = b.count_tokens(request())
    scripted(b, "x" * 400)
    out = run(b, request(max_tokens=1000))
    assert out[-1].stop_reason == "model_context_window_exceeded" and out[-1].usage.output_tokens == 256 - n


def test_unparseable_call_comes_back_as_text(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    scripted(b, "<tool_call>\n{not json</tool_call>")
    out = run(b, request("x", max_tokens=100, tools=[BASH]))
    assert calls_of(out) == []
    assert "{not json" in text_of(out)
    assert out[-1].stop_reason == "end_turn"


def test_thinking_is_streamed_and_signed(tiny_dir: Path) -> None:
    b = backend(tiny_dir)
    scripted(b, "<think>Let me think.</think>\n\nThe answer.")
    out = run(b, request("q", max_tokens=100, thinking=ThinkingConfig(type="enabled", budget_tokens=50)))
    thoughts = [x for x in out if isinstance(x, m.ThinkingDelta)]
    text = "".join(x.text for x in thoughts)
    assert text == "Let me think."
    sig = thoughts[-1].signature
    assert sig and not thoughts[-1].text
    assert Signer(load_key()).verify(text, sig)
    assert text_of(out) == "The answer."
    # the signature comes before the answer's first text
    assert out.index(thoughts[-1]) < next(i for i, x in enumerate(out) if isinstance(x, m.TextDelta))


# ---------------------------------------------------------------- load errors


def test_missing_directory_is_a_load_error_not_a_download(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not an MLX model directory"):
        backend(tmp_path / "org" / "repo")


def test_unknown_option_is_a_load_error(tiny_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="prefill_steps"):
        create(WorkerSpec(id="w", backend="mlx_lm", model="t", runtime_dir="/tmp", gateway_ids=[],
                          path=str(tiny_dir), options={"prefill_steps": 2}))


# ---------------------------------------------------------------- through turnout


def test_through_turnout(tiny_dir: Path, turnout_factory: Callable[..., TurnoutProcess]) -> None:
    """A real worker process: streamed answer and count_tokens over HTTP."""
    t = turnout_factory(f"""
[server]
worker_wait_s = 30.0

[[models]]
name = "tiny-mlx"
backend = "mlx_lm"
path = "{tiny_dir}"
[models.options]
seed = 3
""")
    headers = {"x-api-key": t.token, "content-type": "application/json", "anthropic-version": "2023-06-01"}
    body = {"model": "tiny-mlx", "max_tokens": 8, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "hello through turnout"}]}
    req = urllib.request.Request(t.base_url + "/v1/messages", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        sse = r.read().decode()
    assert "event: message_start" in sse and "event: message_stop" in sse
    assert "text_delta" in sse
    count = dict(body)
    for k in ("max_tokens", "temperature", "stream"):
        count.pop(k)
    req = urllib.request.Request(t.base_url + "/v1/messages/count_tokens", data=json.dumps(count).encode(),
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        n = json.loads(r.read())["input_tokens"]
    local = backend(tiny_dir)
    expected = local.count_tokens(ChatRequest(model="tiny-mlx", max_tokens=1,
                                              messages=[Message("user", [TextPart("hello through turnout")])]))
    assert n == expected
    assert n > 10  # the byte-level tokenizer, not a word count (3 words)


def test_a_new_claude_code_session_reuses_the_shared_prefix(tiny_dir: Path) -> None:
    """Two sessions' prompts differ in the billing header's hash and the user's words:
    in the cache-friendly order they share everything before those words."""
    b = backend(tiny_dir)

    def session(hash_: str, words: str) -> ChatRequest:
        return ChatRequest(model="tiny", max_tokens=4, temperature=0.0, tools=[Tool("Bash", "Runs commands.")],
                           system=[TextPart(f"x-anthropic-billing-header: cc_version=2.1.197.{hash_};"),
                                   TextPart(LONG + "\n\n# Environment\n - Platform: linux")],
                           messages=[Message("user", [TextPart(words)])])

    run(b, session("1c0", "say hello"))
    second = session("c40", "run echo hi")
    started = run(b, second)[0]
    n = b.count_tokens(second)
    assert started.cache_read_input_tokens >= n - 30  # all but "run echo hi" and the turn's end (byte tokens)
