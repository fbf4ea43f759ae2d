"""Client-side traffic for the observability functional tests, with the client's own timings.

Every session runs through the official ``openai`` SDK (``AsyncOpenAI.realtime.connect`` /
``beta.realtime.connect``), pointed at a relay (or, for reference RTTs, straight at the
simulator). Timings use ``time.monotonic_ns`` and are taken so they bracket what the relay sees:

- a turn starts *before* the client sends its ``commit``/``response.create`` (the relay gets the
  frame later) and its first audio is stamped *after* the SDK hands the delta over (the relay
  sent it earlier): the relay's first-audio sample can only be shorter;
- a tool call starts *after* the client received ``function_call_arguments.done`` and ends
  *after* its ``function_call_output`` went out: the relay's tool-call sample can only be longer.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI

AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@dataclass
class ClientTimings:
    first_audio_s: list[float] = field(default_factory=list)
    """Turn end (client send) to first output audio (client receive), one per turn."""
    tool_call_s: list[float] = field(default_factory=list)
    """function_call_arguments.done received to function_call_output sent."""
    rtt_s: list[float] = field(default_factory=list)
    """input_audio_buffer.clear sent to input_audio_buffer.cleared received."""
    sessions_ok: int = 0
    events: dict[str, int] = field(default_factory=dict)


def client(base_url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, websocket_base_url=base_url, max_retries=0)


async def _until(conn: Any, wanted: set[str], timings: ClientTimings) -> tuple[Any, int]:
    """Read events until one of ``wanted``; returns it and its receive time."""
    while True:
        event = await conn.recv()
        now = time.monotonic_ns()
        timings.events[event.type] = timings.events.get(event.type, 0) + 1
        if event.type == "error" and "error" not in wanted:
            raise AssertionError(f"unexpected error event: {event.error}")
        if event.type in wanted:
            return event, now


async def _answer(conn: Any, start_ns: int, timings: ClientTimings) -> None:
    """Wait for this turn's first audio, then for its ``response.done``."""
    _, got = await _until(conn, set(AUDIO_DELTAS), timings)
    timings.first_audio_s.append((got - start_ns) / 1e9)
    await _until(conn, {"response.done"}, timings)


async def _configure(conn: Any, *, beta: bool, tools: bool = False) -> None:
    if beta:
        session: dict[str, Any] = {"modalities": ["audio", "text"], "turn_detection": None}
        if tools:
            session["tools"] = [TOOL]
        await conn.session.update(session=session)
    else:
        session = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": {"turn_detection": None}},
        }
        if tools:
            session["tools"] = [TOOL]
        await conn.session.update(session=session)
    await _until(conn, {"session.updated"}, ClientTimings())


async def _say(conn: Any, text: str) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )


async def text_turns(
    base_url: str, key: str, timings: ClientTimings, *, turns: int = 2, beta: bool = False
) -> None:
    """Turns driven by ``response.create`` after a text message (GA or beta dialect)."""
    api = client(base_url, key)
    realtime = api.beta.realtime if beta else api.realtime
    async with realtime.connect(model="gpt-realtime") as conn:
        await _until(conn, {"session.created"}, timings)
        await _configure(conn, beta=beta)
        for i in range(turns):
            await _say(conn, f"Turn {i}: my email is caller{i}@example.com, please confirm.")
            start = time.monotonic_ns()
            await conn.response.create()
            await _answer(conn, start, timings)
    timings.sessions_ok += 1


async def audio_commit_turn(base_url: str, key: str, timings: ClientTimings, audio_pcm16: bytes) -> None:
    """A push-to-talk turn: append audio, ``commit`` (the turn end), then ``response.create``."""
    async with client(base_url, key).realtime.connect(model="gpt-realtime") as conn:
        await _until(conn, {"session.created"}, timings)
        await _configure(conn, beta=False)
        chunk = 48 * 100  # 100 ms of 24 kHz PCM16
        for i in range(0, len(audio_pcm16), chunk):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio_pcm16[i : i + chunk]).decode())
        start = time.monotonic_ns()
        await conn.input_audio_buffer.commit()
        await _until(conn, {"input_audio_buffer.committed"}, timings)
        await conn.response.create()
        await _answer(conn, start, timings)
    timings.sessions_ok += 1


async def tool_turn(base_url: str, key: str, timings: ClientTimings) -> None:
    """The model calls a tool; the client answers it; the model speaks the result."""
    async with client(base_url, key).realtime.connect(model="gpt-realtime") as conn:
        await _until(conn, {"session.created"}, timings)
        await _configure(conn, beta=False, tools=True)
        await _say(conn, 'What is the weather? Use get_weather {"city": "Paris"}')
        start = time.monotonic_ns()
        await conn.response.create()
        call, got = await _until(conn, {"response.function_call_arguments.done"}, timings)
        await _until(conn, {"response.done"}, timings)
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}
        )
        sent = time.monotonic_ns()
        timings.tool_call_s.append((sent - got) / 1e9)
        await conn.response.create()
        await _answer(conn, start, timings)
    timings.sessions_ok += 1


async def malformed_frame(base_url: str, key: str, timings: ClientTimings) -> None:
    """A frame that is not JSON: the relay answers with an ``error`` and the session goes on."""
    async with client(base_url, key).realtime.connect(model="gpt-realtime") as conn:
        await _until(conn, {"session.created"}, timings)
        await conn.send_raw("{this is not json")
        await _until(conn, {"error"}, timings)
    timings.sessions_ok += 1


async def rtt_probes(base_url: str, key: str, n: int) -> list[float]:
    """``n`` round trips of ``input_audio_buffer.clear`` → ``input_audio_buffer.cleared``."""
    timings = ClientTimings()
    async with client(base_url, key).realtime.connect(model="gpt-realtime") as conn:
        await _until(conn, {"session.created"}, timings)
        await _configure(conn, beta=False)
        for _ in range(n):
            start = time.monotonic_ns()
            await conn.input_audio_buffer.clear()
            _, got = await _until(conn, {"input_audio_buffer.cleared"}, timings)
            timings.rtt_s.append((got - start) / 1e9)
    return timings.rtt_s


async def concurrent_refused(base_url: str, key: str, timings: ClientTimings) -> Exception:
    """Hold one session open and try a second one with the same key (a concurrency limit of 1)."""
    async with client(base_url, key).realtime.connect(model="gpt-realtime") as conn:
        await _until(conn, {"session.created"}, timings)
        exc = await refused(base_url, key)
    timings.sessions_ok += 1
    return exc


async def refused(base_url: str, key: str) -> Exception:
    """Connect and expect the upgrade to be refused; returns the SDK's exception."""
    try:
        async with client(base_url, key).realtime.connect(model="gpt-realtime") as conn:
            await conn.recv()
    except Exception as exc:  # the SDK raises websockets' InvalidStatus for a refused upgrade
        return exc
    raise AssertionError("the upgrade was accepted")


async def abnormal_close(ws_url: str, key: str) -> None:
    """A caller that hangs up with an application close code (4000): not a normal end."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"{ws_url}/realtime?model=gpt-realtime", headers={"Authorization": f"Bearer {key}"}
        )
        await ws.receive_json()
        await ws.close(code=4000, message=b"caller gone")
