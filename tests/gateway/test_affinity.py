"""Cache-aware worker choice (gateway/affinity.py): pure policy, no processes."""

from __future__ import annotations

from turnout.gateway import affinity as aff
from turnout.protocol.chat import ChatRequest, Message, TextPart, Tool

C = aff.Candidate


def test_the_session_goes_back_to_its_worker() -> None:
    got = aff.choose([C("w1", 0), C("w2", 1), C("w3", 0)], "w2", [{"w1"}])
    assert got == aff.Choice("w2", "session", 1)


def test_the_deepest_prefix_wins_then_the_least_loaded_holder() -> None:
    holders = [{"w1", "w2", "w3"}, {"w2", "w3"}, {"w3"}, set()]
    assert aff.choose([C("w1", 0), C("w2", 0), C("w3", 1)], "", holders) == aff.Choice("w3", "prefix", 3)
    holders = [{"w1", "w2", "w3"}, {"w2", "w3"}]
    assert aff.choose([C("w1", 0), C("w2", 1), C("w3", 0)], "", holders) == aff.Choice("w3", "prefix", 2)


def test_a_much_busier_holder_is_passed_over() -> None:
    cands = [C("w1", 3), C("w2", 0), C("w3", 1)]
    assert aff.choose(cands, "w1", []) == aff.Choice("w2", "balance", 0, "w1")
    assert aff.choose(cands, "", [{"w1"}]) == aff.Choice("w2", "balance", 0, "w1")
    # one request above the least loaded is within the bound: the cache wins
    assert aff.choose([C("w1", 1), C("w2", 0)], "w1", []).worker_id == "w1"  # type: ignore[union-attr]
    # the relative bound: 7 vs 5 is two above the least loaded, but within 1.5 times its load
    assert aff.choose([C("w1", 7), C("w2", 5)], "w1", []).worker_id == "w1"  # type: ignore[union-attr]


def test_nothing_held_goes_to_the_least_loaded() -> None:
    assert aff.choose([C("w1", 2), C("w2", 1)], "gone", [set()]) == aff.Choice("w2", "least_loaded")
    assert aff.choose([], "", []) is None


def test_new_sessions_spread_over_idle_workers() -> None:
    """Six sessions of one project arriving at once on three idle workers: two each."""
    a = aff.Affinity()
    loads = {"w1": 0, "w2": 0, "w3": 0}
    keys = ["shared"]
    for i in range(6):
        got = aff.choose([C(w, n) for w, n in loads.items()], "", a.holders(keys))
        assert got is not None
        loads[got.worker_id] += 1
        a.record(got.worker_id, f"s{i}", keys)
    assert loads == {"w1": 2, "w2": 2, "w3": 2}


def test_affinity_forgets_a_worker_and_stays_bounded() -> None:
    a = aff.Affinity(max_sessions=2, max_keys=3)
    a.record("w1", "s1", ["k0", "k1"])
    a.record("w2", "s2", ["k0", "k2"])
    assert a.session_worker("s1") == "w1" and a.holders(["k0", "k1", "k2"]) == [{"w1", "w2"}, {"w1"}, {"w2"}]
    a.record("w2", "s3", ["k3"])
    assert a.session_worker("s1") == "" and len(a.keys) == 3
    a.forget_worker("w2")
    assert a.session_worker("s2") == "" and all("w2" not in h for h in a.keys.values())


def _req(session: str, turns: list[str], system: str = "stable") -> ChatRequest:
    msgs = [Message("user" if i % 2 == 0 else "assistant", [TextPart(t)]) for i, t in enumerate(turns)]
    return ChatRequest(model="m", max_tokens=5, system=[TextPart(system)], tools=[Tool("Bash")], messages=msgs,
                       session_id=session)


def test_prefix_keys_follow_a_conversation_and_share_its_start() -> None:
    one = aff.prefix_keys(_req("a", ["hi"]))
    two = aff.prefix_keys(_req("a", ["hi", "hello", "more"]))
    other = aff.prefix_keys(_req("b", ["different"]))
    assert two[: len(one)] == one and len(two) == 4
    assert other[0] == one[0] and other[1] != one[1]
    assert aff.prefix_keys(_req("a", ["hi"], system="x-anthropic-billing-header: cc_version=1.abc;\nstable"))[0] \
        == one[0]  # the billing header is not part of the shared prefix
