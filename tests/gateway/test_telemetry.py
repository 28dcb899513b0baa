"""The stream observer (gateway/telemetry.py): usage, local speed and MCP tool_use
ids are noted from the stream itself, with or without the MCP server."""

from __future__ import annotations

import asyncio

from turnout.gateway.telemetry import Telemetry, observe
from turnout.protocol import messages as m
from turnout.protocol.chat import ChatRequest, Message, TextPart, Tool, Usage
from turnout.protocol.config import Config, EndpointConfig, EndpointModel


class Src:
    """A source that hands out prepared batches."""

    def __init__(self, batches: list[list[m.StreamMsg]], ep: EndpointConfig | None = None, model: str = "fake") -> None:
        self.batches = batches
        self.ep = ep
        self.model = model
        self.done = False
        self.cancelled = False

    async def next_batch(self) -> list[m.StreamMsg]:
        b = self.batches.pop(0)
        self.done = not self.batches
        return b

    def cancel(self) -> None:
        self.cancelled = True


def req(session: str = "s1", tools: list[Tool] | None = None) -> ChatRequest:
    return ChatRequest(model="x", messages=[Message(role="user", content=[TextPart(text="hi")])], max_tokens=8,
                       tools=tools or [], session_id=session)


def drain(st: object) -> None:
    async def go() -> None:
        while not st.done:  # type: ignore[attr-defined]
            await st.next_batch()  # type: ignore[attr-defined]
    asyncio.run(go())


def test_a_local_answer_is_measured_and_counted() -> None:
    tel = Telemetry()
    done = m.Done("r", 3, "end_turn", Usage(input_tokens=10, output_tokens=5))
    drain(observe(tel, Config(), req(), Src([[m.TextDelta("r", 1, "a")], [m.TextDelta("r", 2, "b"), done]])))
    s = tel.endpoint_summary("fake")
    assert s["requests"] == 1 and s["ttft_ms_p50"] is not None and s["tokens_per_s"] is not None
    assert tel.usage.endpoints["fake"].output_tokens == 5
    assert tel.usage.sessions["s1"]["fake"].input_tokens == 10
    assert tel.usage.total().requests == 1


def test_a_cloud_answer_is_priced_and_left_to_the_router_to_time() -> None:
    ep = EndpointConfig("gem", "gemini", models=[EndpointModel("flash", input_price=1.0, output_price=2.0)])
    tel = Telemetry()
    done = m.Done("r", 1, "end_turn", Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    drain(observe(tel, Config(endpoints=[ep]), req(), Src([[done]], ep=ep, model="flash")))
    assert tel.usage.endpoints["gem/flash"].cost_usd == 3.0
    assert tel.endpoint_summary("gem/flash")["requests"] == 0  # the router measures cloud endpoints


def test_an_mcp_tool_call_is_indexed_to_its_session() -> None:
    tel = Telemetry()
    tools = [Tool(name="mcp__turnout__endpoint_set"), Tool(name="Read")]
    batch: list[m.StreamMsg] = [m.ToolCallStart("r", 1, 0, "toolu_1", "mcp__turnout__endpoint_set"),
                                m.ToolCallStart("r", 2, 1, "toolu_2", "Read"),
                                m.Done("r", 3, "tool_use")]
    drain(observe(tel, Config(), req("sess-9", tools), Src([batch])))
    assert tel.tool_uses.get("toolu_1") == "sess-9"
    assert tel.tool_uses.get("toolu_2") is None


def test_a_failed_local_answer_counts_as_an_error() -> None:
    tel = Telemetry()
    drain(observe(tel, Config(), req(), Src([[m.Failed("r", 1, "internal", "boom")]])))
    assert tel.endpoint_summary("fake")["error_rate"] == 1.0
