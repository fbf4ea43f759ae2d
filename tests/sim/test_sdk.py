"""The official openai SDK, both dialects, against the simulator: voice, text, tools, barge-in.

Every event the SDK hands back must be one of its own typed models, and every raw frame the
simulator sent must validate strictly against the dialect's server-event union.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from openai import AsyncOpenAI

from relay.sim import SimServer
from tests.sim.conftest import API_KEY
from tests.sim.sdkcheck import recv_until, types_of, validate_frames, without_deltas
from tests.support.audio import b64, chunks, duration_ms, speech_pcm16, utterance_pcm16

DIALECTS = ["ga", "beta"]


@asynccontextmanager
async def connect(sim: SimServer, dialect: str) -> AsyncIterator[Any]:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=sim.base_url)
    if dialect == "ga":
        async with client.realtime.connect(model="gpt-realtime") as conn:
            yield conn
    else:
        async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
            yield conn
    await client.close()


def session_update(dialect: str, **ga: Any) -> dict[str, Any]:
    """A session.update body in the dialect's shape from GA-style keyword arguments."""
    if dialect == "ga":
        return {"type": "realtime", **ga}
    out: dict[str, Any] = {}
    for key, value in ga.items():
        if key == "transcription":
            out["input_audio_transcription"] = value
        elif key == "output_modalities":
            out["modalities"] = ["text"] if value == ["text"] else ["audio", "text"]
        else:
            out[key] = value
    return out


def session_update_ga_audio(dialect: str, transcription: dict[str, Any], **rest: Any) -> dict[str, Any]:
    if dialect == "ga":
        return {"type": "realtime", "audio": {"input": {"transcription": transcription}}, **rest}
    return {"input_audio_transcription": transcription, **rest}


def names(dialect: str) -> dict[str, str]:
    if dialect == "ga":
        return {
            "audio_delta": "response.output_audio.delta",
            "tr_done": "response.output_audio_transcript.done",
            "item_added": "conversation.item.added",
        }
    return {
        "audio_delta": "response.audio.delta",
        "tr_done": "response.audio_transcript.done",
        "item_added": "conversation.item.created",
    }


def audio_bytes(events: list[Any], dialect: str) -> int:
    delta = names(dialect)["audio_delta"]
    return sum(len(base64.b64decode(e.delta)) for e in events if e.type == delta)


def user_text(dialect: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_voice_turn_with_server_vad(sim: SimServer, dialect: str) -> None:
    beta = dialect == "beta"
    said = "What is the capital of France?"
    sim.script_transcripts(said)
    async with connect(sim, dialect) as conn:
        created = await recv_until(conn, "session.created", beta)
        session = created[-1].session
        if beta:
            assert session.turn_detection.type == "server_vad" and session.input_audio_format == "pcm16"
        else:
            assert session.type == "realtime" and session.audio.input.format.type == "audio/pcm"
            assert session.audio.input.turn_detection.silence_duration_ms == 200
        await conn.session.update(
            session=session_update_ga_audio(dialect, {"model": "gpt-4o-mini-transcribe"})
        )
        await recv_until(conn, "session.updated", beta)

        speech = speech_pcm16(said)
        pcm = utterance_pcm16(said, lead_ms=1000, tail_ms=800)
        for piece in chunks(pcm, 20):
            await conn.input_audio_buffer.append(audio=b64(piece))
        events = await recv_until(conn, "response.done", beta)
        seq = without_deltas(types_of(events))
        started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
        stopped = next(e for e in events if e.type == "input_audio_buffer.speech_stopped")
        # Speech begins after 1000 ms of silence (plus espeak's own lead-in); 300 ms padding.
        assert 690 <= started.audio_start_ms <= 1000
        assert 1000 + 200 <= stopped.audio_end_ms <= 1000 + duration_ms(speech) + 200 + 10
        assert started.item_id == stopped.item_id
        transcript = next(
            e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
        )
        assert transcript.transcript == said and transcript.usage.type == "tokens"
        assert transcript.usage.input_tokens == math.ceil(
            (stopped.audio_end_ms - started.audio_start_ms) / 100
        )
        expected_head = [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
        ]
        assert seq[: len(expected_head)] == expected_head
        assert (
            seq.index("response.created")
            < seq.index("rate_limits.updated")
            < seq.index("response.output_item.added")
        )
        assert names(dialect)["tr_done"] in seq and "response.content_part.done" in seq
        done = events[-1].response
        assert done.status == "completed"
        assert done.output[0].content[0].transcript == f"You said: {said}"
        assert done.usage.input_token_details.audio_tokens == transcript.usage.input_tokens
        assert audio_bytes(events, dialect) > 48_000  # at least a second of real speech
    validate_frames(sim.connections[-1].sent_frames, beta)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_text_turn_text_modality(sim: SimServer, dialect: str) -> None:
    beta = dialect == "beta"
    async with connect(sim, dialect) as conn:
        await recv_until(conn, "session.created", beta)
        await conn.session.update(
            session=session_update(dialect, output_modalities=["text"], instructions="Be brief.")
        )
        await recv_until(conn, "session.updated", beta)
        await conn.conversation.item.create(item=user_text(dialect, "Hello there"))
        await recv_until(conn, names(dialect)["item_added"], beta)
        await conn.response.create()
        events = await recv_until(conn, "response.done", beta)
        text_delta = "response.text.delta" if beta else "response.output_text.delta"
        text = "".join(e.delta for e in events if e.type == text_delta)
        assert text == "You said: Hello there"
        done = events[-1].response
        assert done.status == "completed"
        assert done.usage.output_token_details.audio_tokens == 0
        assert done.usage.output_token_details.text_tokens == math.ceil(len(text) / 4)
        assert done.usage.input_tokens == math.ceil(len("Be brief.") / 4) + math.ceil(len("Hello there") / 4)
    validate_frames(sim.connections[-1].sent_frames, beta)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_function_call_then_spoken_answer(sim: SimServer, dialect: str) -> None:
    beta = dialect == "beta"
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    async with connect(sim, dialect) as conn:
        await recv_until(conn, "session.created", beta)
        await conn.session.update(session=session_update(dialect, tools=[tool], tool_choice="auto"))
        await recv_until(conn, "session.updated", beta)
        await conn.conversation.item.create(
            item=user_text(dialect, 'Please call get_weather with {"city": "Paris"}')
        )
        await conn.response.create()
        events = await recv_until(conn, "response.done", beta)
        args_done = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert json.loads(args_done.arguments) == {"city": "Paris"}
        if not beta:
            assert args_done.name == "get_weather"
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert deltas == args_done.arguments
        call = events[-1].response.output[0]
        assert (
            call.type == "function_call" and call.call_id == args_done.call_id and call.name == "get_weather"
        )

        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": args_done.call_id, "output": '{"temp_c": 21}'}
        )
        await conn.response.create()
        events = await recv_until(conn, "response.done", beta)
        transcript = next(e for e in events if e.type == names(dialect)["tr_done"]).transcript
        assert transcript == 'The result is {"temp_c": 21}.'
        assert audio_bytes(events, dialect) > 0
    validate_frames(sim.connections[-1].sent_frames, beta)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_interruption_cancels_and_truncate(sim: SimServer, dialect: str) -> None:
    beta = dialect == "beta"
    sim.script_transcripts("Stop, stop.")
    async with connect(sim, dialect) as conn:
        await recv_until(conn, "session.created", beta)
        sim.config.pace = 1.0  # real time, so the caller can barge in
        await conn.conversation.item.create(item=user_text(dialect, "Tell me a long story about the sea"))
        await conn.response.create()
        first = await recv_until(conn, names(dialect)["audio_delta"], beta)
        assistant_item = first[-1].item_id
        for piece in chunks(utterance_pcm16("Stop, stop.", lead_ms=100, tail_ms=700), 20):
            await conn.input_audio_buffer.append(audio=b64(piece))
        events = first + await recv_until(conn, "response.done", beta)
        sim.config.pace = 0.02
        seq = without_deltas(types_of(events))
        assert seq.index("input_audio_buffer.speech_started") < seq.index("response.done")
        done = events[-1].response
        assert done.status == "cancelled"
        assert done.status_details.type == "cancelled" and done.status_details.reason == "turn_detected"
        sent = audio_bytes(events, dialect)
        assert done.usage.output_token_details.audio_tokens == math.ceil(sent * 20 / 48_000)
        assert done.output[0].status == "incomplete"

        await conn.conversation.item.truncate(item_id=assistant_item, content_index=0, audio_end_ms=50)
        truncated = await recv_until(conn, "conversation.item.truncated", beta)
        assert truncated[-1].audio_end_ms == 50
        # The caller's turn then completes and gets its own answer.
        after = await recv_until(conn, "response.done", beta)
        assert "input_audio_buffer.committed" in types_of(truncated + after)
        assert after[-1].response.status == "completed"

        # Manual cancel of a running response, then cancel with nothing running.
        sim.config.pace = 1.0
        await conn.conversation.item.create(item=user_text(dialect, "Another long answer please"))
        await conn.response.create()
        await recv_until(conn, names(dialect)["audio_delta"], beta)
        await conn.response.cancel()
        cancelled = await recv_until(conn, "response.done", beta)
        assert cancelled[-1].response.status_details.reason == "client_cancelled"
        await conn.send({"type": "response.cancel", "event_id": "evt_cancel_idle"})
        err = await recv_until(conn, "error", beta)
        assert err[-1].error.code == "response_cancel_not_active"
        assert err[-1].error.event_id == "evt_cancel_idle"
    validate_frames(sim.connections[-1].sent_frames, beta)
