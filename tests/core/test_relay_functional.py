"""The relay end to end: official clients, real sockets, the simulator as upstream."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI

from relay.sim import SimServer
from relay.upstream import UpstreamTarget
from tests.core.conftest import SIM_KEY
from tests.support.audio import append_frames, speech_pcm16, utterance_pcm16
from tests.support.relay import OTHER_KEY, RunningRelay, free_port, running_relay
from tests.support.tls import make_test_ca

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def until(conn: Any, etype: str, seen: list[str] | None = None, limit: float = 20.0) -> Any:
    async with asyncio.timeout(limit):
        async for event in conn:
            if seen is not None:
                seen.append(event.type)
            if event.type == "error":
                raise AssertionError(f"error event: {event}")
            if event.type == etype:
                return event
    raise AssertionError(f"connection ended before {etype}")


async def voice_turn_and_tool_call(conn: Any, sim: SimServer, *, beta: bool) -> None:
    """A spoken question that triggers get_weather, the tool output, and the spoken answer."""
    sim.script_transcripts('What is the get_weather for {"city": "Paris"}?')
    if beta:
        await conn.session.update(
            session={
                "modalities": ["audio", "text"],
                "tools": [WEATHER_TOOL],
                "turn_detection": {"type": "server_vad"},
            }
        )
    else:
        await conn.session.update(
            session={
                "type": "realtime",
                "tools": [WEATHER_TOOL],
                "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
            }
        )
    await until(conn, "session.updated")
    for frame in append_frames(utterance_pcm16("what is the weather in Paris")):
        await conn.send(orjson.loads(frame))
    seen: list[str] = []
    done = await until(conn, "response.done", seen)
    assert "input_audio_buffer.speech_started" in seen and "input_audio_buffer.committed" in seen
    call = next(o for o in done.response.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    await conn.conversation.item.create(
        item={"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}
    )
    await conn.response.create()
    seen = []
    done = await until(conn, "response.done", seen)
    audio_delta = "response.audio.delta" if beta else "response.output_audio.delta"
    assert audio_delta in seen
    assert done.response.status == "completed"


async def test_openai_python_ga_voice_turn_and_function_call(relay: RunningRelay, sim: SimServer) -> None:
    client = AsyncOpenAI(api_key=relay.key, websocket_base_url=relay.ws_base)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await voice_turn_and_tool_call(conn, sim, beta=False)
    upstream = sim.connections[-1]
    # the relay's own key replaced the client's
    assert upstream.request_headers["Authorization"] == f"Bearer {SIM_KEY}"
    assert relay.key not in str(dict(upstream.request_headers))
    assert upstream.dialect == "ga" and upstream.query.get("model") == "gpt-realtime"


async def test_openai_python_beta_voice_turn_and_function_call(relay: RunningRelay, sim: SimServer) -> None:
    client = AsyncOpenAI(api_key=relay.key, websocket_base_url=relay.ws_base)
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        await until(conn, "session.created")
        await voice_turn_and_tool_call(conn, sim, beta=True)
    upstream = sim.connections[-1]
    assert upstream.dialect == "beta" and upstream.request_headers.get("OpenAI-Beta") == "realtime=v1"


async def test_openai_agents_voice_turn_with_a_function_tool(relay: RunningRelay, sim: SimServer) -> None:
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"Sunny in {city}"

    sim.script_transcripts('get_weather {"city": "Oslo"}')
    agent = RealtimeAgent(name="assistant", instructions="Be brief.", tools=[get_weather])
    runner = RealtimeRunner(agent)
    session = await runner.run(model_config={"url": f"{relay.url}?model=gpt-realtime", "api_key": relay.key})
    audio_after_tool = False
    async with session:
        for frame in append_frames(utterance_pcm16("what is the weather in Oslo")):
            await session.send_audio(base64.b64decode(orjson.loads(frame)["audio"]))
        async with asyncio.timeout(30):
            async for event in session:
                if event.type == "audio" and calls:
                    audio_after_tool = True
                if event.type == "error":
                    raise AssertionError(f"agents error: {event}")
                if event.type == "audio_end" and audio_after_tool:
                    break
    assert calls == ["Oslo"]
    outputs = [
        e["item"]
        for e in sim.connections[-1].received()
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert outputs and "Sunny in Oslo" in outputs[0]["output"]


async def test_browser_style_subprotocol_auth(relay: RunningRelay, sim: SimServer) -> None:
    """A browser's WebSocket: credentials in subprotocols, a voice turn that calls a tool."""
    protocols = ("realtime", f"openai-insecure-api-key.{relay.key}")
    sim.script_transcripts('get_weather {"city": "Rome"}')
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{relay.url}?model=gpt-realtime", protocols=protocols) as ws:
            assert ws.protocol == "realtime"
            assert ws._response.headers["X-Relay-Session-Id"].startswith("rs_")  # noqa: SLF001
            assert (await ws.receive_json())["type"] == "session.created"
            await ws.send_json(
                {"type": "session.update", "session": {"type": "realtime", "tools": [WEATHER_TOOL]}}
            )
            for frame in append_frames(utterance_pcm16("what is the weather in Rome")):
                await ws.send_str(frame)
            call = await _raw_until(ws, "response.function_call_arguments.done")
            assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Rome"}
            await _raw_until(ws, "response.done")
            await ws.send_json(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
                }
            )
            await ws.send_json({"type": "response.create"})
            await _raw_until(ws, "response.output_audio.delta")
            done = await _raw_until(ws, "response.done")
            assert "sunny" in json.dumps(done)
    upstream = sim.connections[-1]
    offered = upstream.request_headers.get("Sec-WebSocket-Protocol", "")
    assert "openai-insecure-api-key" not in offered and relay.key not in offered
    assert upstream.request_headers["Authorization"] == f"Bearer {SIM_KEY}"


async def _raw_until(ws: aiohttp.ClientWebSocketResponse, etype: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            event = orjson.loads(msg.data)
            if event["type"] == etype:
                return dict(event)


async def test_openai_python_over_tls_with_a_test_ca(tmp_path: Path, sim: SimServer) -> None:
    ca = make_test_ca(tmp_path / "ca")
    async with running_relay(
        tmp_path, upstream=sim, tls_cert=str(ca.server_cert), tls_key=str(ca.server_key)
    ) as r:
        assert r.ws_base.startswith("wss://")
        ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
        client = AsyncOpenAI(api_key=r.key, websocket_base_url=r.ws_base)
        async with client.realtime.connect(
            model="gpt-realtime", websocket_connection_options={"ssl": ctx}
        ) as conn:
            await until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello over TLS"}],
                }
            )
            await conn.response.create()
            done = await until(conn, "response.done")
            assert "hello over TLS" in done.model_dump_json()
        # a client that does not trust the CA is refused by TLS itself
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted = AsyncOpenAI(api_key=r.key, websocket_base_url=r.ws_base)
            async with untrusted.realtime.connect(model="gpt-realtime") as conn:
                await conn.recv()


async def test_frames_are_byte_identical_both_ways(relay: RunningRelay, sim: SimServer) -> None:
    sent = [
        '{"type":"session.update","session":{"type":"realtime","output_modalities":["text"]},"event_id":"evt_c1"}',
        '{ "event_id" : "evt_c2",  "type":"conversation.item.create", "item":{"type":"message","role":"user",'
        '"content":[{"type":"input_text","text":"Grüße — ✓ 你好"}]}, "x_unknown_field": [1, {"deep": null}] }',
        '{"type":"x.relay.unknown_event","payload":"passes through"}',
        '{"type":"response.create","event_id":"evt_c3"}',
    ]
    received: list[str] = []
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {relay.key}"}
        async with http.ws_connect(f"{relay.url}?model=gpt-realtime", headers=headers) as ws:
            for frame in sent:
                await ws.send_str(frame)
            async with asyncio.timeout(20):
                while True:
                    msg = await ws.receive()
                    received.append(msg.data)
                    if '"response.done"' in msg.data:
                        break
    upstream = sim.connections[-1]
    assert upstream.received_frames == sent
    assert received == upstream.sent_frames[: len(received)]
    assert any(
        '"type":"error"' in f for f in received
    )  # the simulator's answer to the unknown type, passed on


async def test_bad_or_missing_key_gets_401_before_any_upgrade(relay: RunningRelay, sim: SimServer) -> None:
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with aiohttp.ClientSession() as http:
        for auth in ({"Authorization": "Bearer rr-wrong"}, {}, {"api-key": SIM_KEY}):
            async with http.get(f"{relay.url}?model=gpt-realtime", headers={**upgrade, **auth}) as resp:
                assert resp.status == 401
                body = await resp.json()
                assert (
                    body["error"]["code"] == "invalid_api_key"
                    and body["error"]["type"] == "invalid_request_error"
                )
        # another tenant's key is valid
        async with http.ws_connect(f"{relay.url}?model=gpt-realtime", headers={"api-key": OTHER_KEY}) as ws:
            assert (await ws.receive_json())["type"] == "session.created"
    assert len(sim.connections) == 1  # only the good key reached upstream


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [(429, 429, "rate_limit_exceeded"), (500, 502, "upstream_unavailable"), (404, 404, "upstream_refused")],
)
async def test_upstream_handshake_refusals_map_to_statuses(
    relay: RunningRelay, sim: SimServer, fault: int, status: int, code: str
) -> None:
    sim.faults.refuse_handshake = fault
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(
                f"{relay.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {relay.key}"}
            )
        assert info.value.status == status
        async with http.get(
            f"{relay.url}?model=gpt-realtime",
            headers={
                "Authorization": f"Bearer {relay.key}",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },  # fmt: skip
        ) as resp:
            assert resp.status == status and (await resp.json())["error"]["code"] == code


async def test_upstream_refusing_the_relay_key_or_down_is_502(tmp_path: Path, sim: SimServer) -> None:
    for target, code in (
        (UpstreamTarget(sim.url, "sk-wrong-relay-key", 5.0), "upstream_auth_failed"),
        (UpstreamTarget(f"ws://127.0.0.1:{free_port()}/v1/realtime", "k", 5.0), "upstream_unavailable"),
    ):
        async with running_relay(tmp_path, upstream=target) as r, aiohttp.ClientSession() as http:
            async with http.get(
                f"{r.url}?model=gpt-realtime",
                headers={
                    "Authorization": f"Bearer {r.key}",
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },  # fmt: skip
            ) as resp:
                assert resp.status == 502
                body = await resp.text()
                assert json.loads(body)["error"]["code"] == code
                assert "sk-wrong-relay-key" not in body


async def test_upstream_close_mid_response_reaches_the_client(relay: RunningRelay, sim: SimServer) -> None:
    sim.faults.close_mid_response = 1011
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{relay.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {relay.key}"}
        ) as ws:
            await ws.send_json({"type": "response.create"})
            async with asyncio.timeout(10):
                while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass
            assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1011


async def test_upstream_drop_without_close_frame_is_an_error_and_1011(
    relay: RunningRelay, sim: SimServer
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{relay.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {relay.key}"}
        ) as ws:
            assert (await ws.receive_json())["type"] == "session.created"
            conn = await sim.wait_for_connections(1)
            assert conn.ws is not None
            conn.ws._req.transport.abort()  # type: ignore[union-attr]  # noqa: SLF001 - a real TCP drop
            texts = []
            async with asyncio.timeout(10):
                while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    texts.append(orjson.loads(msg.data))
            assert (
                texts
                and texts[-1]["type"] == "error"
                and texts[-1]["error"]["code"] == "upstream_disconnected"
            )
            assert ws.close_code == 1011


async def test_malformed_client_frames_get_errors_and_the_session_survives(
    tmp_path: Path, sim: SimServer
) -> None:
    limits = {"max_frame_bytes": 4096}
    async with running_relay(tmp_path, upstream=sim, limits=limits) as r, aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{r.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {r.key}"}
        ) as ws:
            assert (await ws.receive_json())["type"] == "session.created"
            cases = [
                ("{not json", "invalid_json"),
                ("[1, 2]", "invalid_event"),
                ('{"event_id": "e1"}', "missing_type"),
                (b"\x00\x01binary", "binary_frame_not_supported"),
                ('{"type":"input_audio_buffer.append","audio":"' + "A" * 5000 + '"}', "frame_too_large"),
            ]
            for frame, code in cases:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
                event = await ws.receive_json(timeout=5)
                assert event["type"] == "error" and event["error"]["code"] == code
                assert event["error"]["type"] == "invalid_request_error"
            await ws.send_json(
                {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
            )
            await ws.send_json({"type": "response.create"})
            done = await _raw_until(ws, "response.done")
            assert done["response"]["status"] == "completed"
    received = sim.connections[-1].received_frames
    assert all("not json" not in f and "binary" not in f for f in received) and len(received) == 2


async def test_client_close_code_and_reason_reach_upstream(relay: RunningRelay, sim: SimServer) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"{relay.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {relay.key}"}
        )
        assert (await ws.receive_json())["type"] == "session.created"
        await ws.close(code=4001, message=b"caller hung up")
    conn = sim.connections[-1]
    await asyncio.wait_for(conn.closed.wait(), 5)
    assert conn.close_code == 4001


async def test_speech_audio_passes_unchanged(relay: RunningRelay, sim: SimServer) -> None:
    pcm = speech_pcm16("one two three")
    frames = list(append_frames(pcm))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{relay.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {relay.key}"}
        ) as ws:
            for frame in frames:
                await ws.send_str(frame)
            await ws.send_json({"type": "input_audio_buffer.commit"})
            await _raw_until(ws, "input_audio_buffer.committed")
    got = [f for f in sim.connections[-1].received_frames if "input_audio_buffer.append" in f]
    assert got == frames
    assert b"".join(base64.b64decode(orjson.loads(f)["audio"]) for f in got) == pcm


async def test_relay_maximum_session_length_ends_with_an_error_then_close(
    tmp_path: Path, sim: SimServer
) -> None:
    async with (
        running_relay(tmp_path, upstream=sim, limits={"max_session_seconds": 1}) as r,
        aiohttp.ClientSession() as http,
    ):
        async with http.ws_connect(
            f"{r.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {r.key}"}
        ) as ws:
            events = []
            async with asyncio.timeout(10):
                while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    events.append(orjson.loads(msg.data))
            assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "session_expired"
            assert ws.close_code == 1000
