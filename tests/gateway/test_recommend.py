"""endpoint_recommend's policy: a pure function of a snapshot."""

from __future__ import annotations

from turnout.gateway.recommend import Candidate, fmt_tokens, recommend

LOCAL = Candidate("gemma3-270m", local=True, window=32_768, ttft_s=0.3, tokens_per_s=25)
FLASH = Candidate("gemini/gemini-2.0-flash", local=False, window=1_048_576, ttft_s=0.6, tokens_per_s=180,
                  input_price=0.10, output_price=0.40, requests=40)
OPUS = Candidate("anthropic/claude-opus-4", local=False, window=200_000, ttft_s=1.8, tokens_per_s=40,
                 input_price=15.0, output_price=75.0, requests=10)


def test_token_formatting_never_rounds_a_window_up() -> None:
    assert [fmt_tokens(n) for n in (950, 32_768, 47_300, 200_000, 1_048_576, 1_500_000)] == \
        ["950", "32K", "47K", "200K", "1M", "1.5M"]


def test_conversation_past_the_local_window_goes_to_the_big_cheap_fast_one() -> None:
    rec = recommend(47_000, [LOCAL, FLASH, OPUS])
    assert [r.label for r in rec.ranked] == ["gemini/gemini-2.0-flash", "anthropic/claude-opus-4", "gemma3-270m"]
    local = rec.ranked[-1]
    assert not local.usable
    assert local.reason == "you're at 47K tokens; the local model gemma3-270m's window is 32K"
    assert rec.ranked[0].reason.startswith("gemini/gemini-2.0-flash: 1M window, p50 TTFT 0.6 s, 180 tok/s, $0.1/$0.4 per Mtok")
    assert rec.best is not None and rec.best.label == "gemini/gemini-2.0-flash"


def test_small_conversation_stays_on_a_fast_local_model_because_it_is_free() -> None:
    fast_local = Candidate("qwen-local", local=True, window=32_768, ttft_s=0.3, tokens_per_s=200, current=True)
    rec = recommend(2_000, [FLASH, OPUS, fast_local])
    assert rec.ranked[0].label == "qwen-local"
    assert rec.summary == "You're at 2K tokens; stay on qwen-local: it is the best fit."


def test_a_slow_local_model_loses_to_a_fast_cheap_cloud_one_even_when_small() -> None:
    rec = recommend(2_000, [LOCAL, FLASH])
    assert rec.ranked[0].label == "gemini/gemini-2.0-flash"
    assert rec.ranked[1].usable and "25 tok/s" in rec.ranked[1].reason


def test_summary_says_why_to_switch_when_the_current_one_cannot_serve() -> None:
    cur = Candidate("gemma3-270m", local=True, window=32_768, current=True)
    rec = recommend(47_000, [cur, FLASH])
    assert rec.summary == ("You're at 47K tokens; switch to gemini/gemini-2.0-flash: "
                           "you're at 47K tokens; the local model gemma3-270m's window is 32K.")


def test_unavailable_endpoints_rank_last_with_their_reason() -> None:
    nokey = Candidate("openai/gpt-4.1", local=False, window=1_047_576, ttft_s=0.1, tokens_per_s=500,
                      available=False, why_unavailable="no API key: turnout keys set openai")
    rec = recommend(10_000, [nokey, FLASH])
    assert rec.ranked[0].label == "gemini/gemini-2.0-flash"
    assert rec.ranked[-1].reason == "openai/gpt-4.1: unavailable (no API key: turnout keys set openai)"
    # too small ranks before unavailable: it may serve after a compaction
    rec = recommend(47_000, [nokey, LOCAL])
    assert [r.label for r in rec.ranked] == ["gemma3-270m", "openai/gpt-4.1"]
    assert rec.best is None and rec.summary.startswith("You're at 47K tokens; no endpoint can serve")


def test_error_rate_makes_an_equal_endpoint_lose() -> None:
    a = Candidate("a/m", local=False, window=100_000, ttft_s=0.5, tokens_per_s=100, error_rate=0.5, requests=20)
    b = Candidate("b/m", local=False, window=100_000, ttft_s=0.5, tokens_per_s=100, error_rate=0.0, requests=20)
    rec = recommend(1_000, [a, b])
    assert [r.label for r in rec.ranked] == ["b/m", "a/m"]
    assert "50% errors" in rec.ranked[1].reason


def test_price_counts_at_large_sizes() -> None:
    """Opus and Flash equally fast: at 150K tokens Opus costs ~$2.3 a turn and loses."""
    opus = Candidate("o/opus", local=False, window=200_000, ttft_s=0.6, tokens_per_s=180,
                     input_price=15.0, output_price=75.0)
    rec = recommend(150_000, [opus, FLASH])
    assert rec.ranked[0].label == "gemini/gemini-2.0-flash"
    assert "per turn at this size" in rec.ranked[1].reason


def test_nearly_full_window_is_penalised_and_said() -> None:
    tight = Candidate("t/m", local=False, window=40_000, ttft_s=0.5, tokens_per_s=100)
    roomy = Candidate("r/m", local=False, window=400_000, ttft_s=0.7, tokens_per_s=100)
    rec = recommend(35_000, [tight, roomy])
    assert rec.ranked[0].label == "r/m"
    assert "89% full: Claude Code will compact soon" in rec.ranked[1].reason


def test_unmeasured_endpoint_says_so_and_ties_keep_config_order() -> None:
    x = Candidate("x/m", local=False, window=100_000)
    y = Candidate("y/m", local=False, window=100_000)
    rec = recommend(1_000, [x, y])
    assert [r.label for r in rec.ranked] == ["x/m", "y/m"]
    assert "speed not measured yet" in rec.ranked[0].reason


def test_no_candidates() -> None:
    assert recommend(5, []).summary == "You're at 5 tokens; no endpoint is configured."
