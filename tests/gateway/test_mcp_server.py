"""The MCP server's pure parts: forgiving endpoint names and the tool_use index."""

from __future__ import annotations

import pytest

from turnout.gateway.mcp.targets import Choice, match_target
from turnout.gateway.telemetry import ToolUseIndex
from turnout.protocol.config import Config, EndpointConfig, EndpointModel, ModelConfig

CFG = Config(models=[ModelConfig(name="gemma3-270m", backend="llama_cpp")],
             endpoints=[EndpointConfig(name="gemini", provider="gemini", models=[
                 EndpointModel("gemini-2.0-flash"), EndpointModel("gemini-2.5-pro")]),
                 EndpointConfig(name="openai", provider="openai", models=[EndpointModel("gpt-4.1")])])
OPTS = [Choice("gemma3-270m", True, "llama_cpp", 0), Choice("gemini/gemini-2.0-flash", False, "gemini", 0),
        Choice("gemini/gemini-2.5-pro", False, "gemini", 0), Choice("openai/gpt-4.1", False, "openai", 0)]


@pytest.mark.parametrize("text,want", [
    ("gemini/gemini-2.0-flash", "gemini/gemini-2.0-flash"),
    ("Gemini Flash", "gemini/gemini-2.0-flash"),
    ("try gemini flash for this", "gemini/gemini-2.0-flash"),
    ("use my local one", "gemma3-270m"),
    ("local", "gemma3-270m"),
    ("gpt 4.1", "openai/gpt-4.1"),
    ("default", None),
    ("back to default", None),
])
def test_names_people_say_map_to_one_endpoint(text: str, want: str | None) -> None:
    assert match_target(text, OPTS, CFG, set()) == want


def test_ambiguous_and_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match=r"matches several endpoints: gemini/gemini-2\.0-flash, gemini/gemini-2\.5-pro"):
        match_target("gemini", OPTS, CFG, set())
    with pytest.raises(ValueError, match="no endpoint matches 'mistral'; choices: gemma3-270m"):
        match_target("mistral", OPTS, CFG, set())


def test_tool_use_index_forgets_the_oldest() -> None:
    idx = ToolUseIndex(size=2)
    idx.add("t1", "a")
    idx.add("t2", "b")
    idx.add("t3", "c")
    assert (idx.get("t1"), idx.get("t2"), idx.get("t3")) == (None, "b", "c")
