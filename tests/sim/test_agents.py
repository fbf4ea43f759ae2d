"""openai-agents' RealtimeRunner completes a voice turn with a function tool against the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner

from relay.sim import SimServer
from tests.sim.conftest import API_KEY
from tests.sim.sdkcheck import validate_frames
from tests.support.audio import chunks, utterance_pcm16

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls.append(city)
    return f"Sunny in {city}"


async def test_agents_voice_turn_with_function_tool(sim: SimServer) -> None:
    spoken = "What is the weather in Paris?"
    sim.script_transcripts('What is the weather? Use get_weather with {"city": "Paris"}')
    agent = RealtimeAgent(name="assistant", instructions="Answer briefly.", tools=[get_weather])
    session = await RealtimeRunner(agent).run(
        model_config={"url": f"{sim.url}?model=gpt-realtime", "api_key": API_KEY}
    )
    seen: list[str] = []
    errors: list[Any] = []
    tool_outputs: list[str] = []
    audio_events = 0
    async with session:
        for piece in chunks(utterance_pcm16(spoken, lead_ms=300, tail_ms=900), 20):
            await session.send_audio(piece)
        async with asyncio.timeout(20):
            async for event in session:
                seen.append(event.type)
                if event.type == "error":
                    errors.append(event.error)
                elif event.type == "raw_model_event" and event.data.type in ("error", "exception"):
                    errors.append(event.data)
                elif event.type == "tool_end":
                    tool_outputs.append(str(event.output))
                elif event.type == "audio":
                    audio_events += 1
                elif event.type == "agent_end" and tool_outputs:
                    break
    assert not errors, errors
    assert calls == ["Paris"]
    assert tool_outputs == ["Sunny in Paris"]
    assert "tool_start" in seen and audio_events > 0
    conn = sim.connections[-1]
    received = conn.received()
    assert any(
        e["type"] == "conversation.item.create" and e["item"].get("type") == "function_call_output"
        for e in received
    )
    transcripts = [
        e["transcript"] for e in conn.sent() if e["type"] == "response.output_audio_transcript.done"
    ]
    assert transcripts[-1] == "The result is Sunny in Paris."
    validate_frames(conn.sent_frames, beta=False)
