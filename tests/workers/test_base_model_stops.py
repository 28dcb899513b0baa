"""A base model (no chat template) ends its turn at its family's default strings,
which the ``stop`` option replaces or turns off."""

from __future__ import annotations

from turnout.workers import chat_templates as ct


def test_base_models_get_default_end_of_turn_strings_that_stop_replaces() -> None:
    assert ct.extra_stops(None, "gemma", base_model=True) == ct.BASE_MODEL_STOPS["gemma"] == ["\n"]
    assert ct.extra_stops(None, "chatml", base_model=True) == ct.BASE_MODEL_STOPS_OTHER
    assert ct.extra_stops(["User:"], "gemma", base_model=True) == ["User:"]  # replaces the defaults
    assert ct.extra_stops([], "gemma", base_model=True) == []  # turns them off
    assert ct.extra_stops(None, "gguf", base_model=False) == []  # a template's EOG ends an instruction model
    assert ct.extra_stops(["###"], "gguf", base_model=False) == ["###"]
