"""The simulator's server side: handshake, auth, dialects, recording, faults, expiry, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from typing import Any

import aiohttp
import pytest

from relay.sim import Faults, SimConfig, SimServer
from tests.sim.conftest import API_KEY
from tests.sim.sdkcheck import validate_frames


async def recv_json(ws: aiohttp.ClientWebSocketResponse, within: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=within)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def recv_until(ws: aiohttp.ClientWebSocketResponse, etype: str) -> list[dict[str, Any]]:
    out = []
    while True:
        ev = await recv_json(ws)
        out.append(ev)
        if ev["type"] == etype:
            return out


@pytest.mark.parametrize(
    ("headers", "protocols"),
    [
        ({"Authorization": f"Bearer {API_KEY}"}, ()),
        ({"api-key": API_KEY}, ()),
        ({}, ("realtime", f"openai-insecure-api-key.{API_KEY}")),
    ],
)
async def test_accepted_key_forms(
    sim: SimServer, headers: dict[str, str], protocols: tuple[str, ...]
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{sim.url}?model=gpt-realtime", headers=headers, protocols=protocols) as ws,
    ):
        created = await recv_json(ws)
        assert created["type"] == "session.created" and created["session"]["type"] == "realtime"
        assert ws.protocol == ("realtime" if protocols else None)
    conn = sim.connections[-1]
    assert conn.api_key == API_KEY and conn.query == {"model": "gpt-realtime"} and conn.dialect == "ga"


@pytest.mark.parametrize(
    ("headers", "code"),
    [({"Authorization": "Bearer sk-wrong-key-123456"}, "invalid_api_key"), ({}, None)],
)
async def test_wrong_or_missing_key_is_401_before_upgrade(
    sim: SimServer, headers: dict[str, str], code: str | None
) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{sim.url}?model=gpt-realtime", headers=headers)
        assert info.value.status == 401
        async with http.get(f"{sim.url}?model=gpt-realtime", headers=headers) as resp:
            body = await resp.json()
    assert resp.status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == code
    assert "sk-wrong-key-123456" not in json.dumps(body)


@pytest.mark.parametrize(
    ("headers", "protocols"),
    [
        ({"Authorization": f"Bearer {API_KEY}", "OpenAI-Beta": "realtime=v1"}, ()),
        ({}, ("realtime", f"openai-insecure-api-key.{API_KEY}", "openai-beta.realtime-v1")),
    ],
)
async def test_beta_dialect_detection(
    sim: SimServer, headers: dict[str, str], protocols: tuple[str, ...]
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{sim.url}?model=gpt-4o-realtime-preview", headers=headers, protocols=protocols
        ) as ws,
    ):
        created = await recv_json(ws)
        assert "type" not in created["session"] and created["session"]["input_audio_format"] == "pcm16"
        assert created["session"]["modalities"] == ["audio", "text"]
    assert sim.connections[-1].dialect == "beta"


async def test_query_rules_and_transcription_intent(sim: SimServer) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as http:
        for query, status in (("", 400), ("?model=a&call_id=b", 400), ("?intent=bogus", 400)):
            async with http.get(f"{sim.url}{query}", headers=auth) as resp:
                assert resp.status == status, query
                assert (await resp.json())["error"]["type"] == "invalid_request_error"
        async with http.ws_connect(f"{sim.url}?intent=transcription", headers=auth) as ws:
            assert (await recv_json(ws))["session"]["type"] == "transcription"
        async with http.ws_connect(f"{sim.url}?call_id=rtc_123", headers=auth) as ws:
            assert (await recv_json(ws))["session"]["type"] == "realtime"


async def test_frames_are_recorded_byte_for_byte(sim: SimServer) -> None:
    odd = '{ "type" : "conversation.item.create", "item":{"type":"message","role":"user","content":[{"type":"input_text","text":"Hé \\u00e9"}]}, "x-extra": [1,2] }'
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{sim.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {API_KEY}", "X-Custom": "1"}
        ) as ws,
    ):
        await recv_json(ws)
        await ws.send_str(odd)
        added = await recv_until(ws, "conversation.item.done")
        assert added[-1]["item"]["content"][0]["text"] == "Hé é"
        conn = sim.connections[-1]
        assert conn.received_frames == [odd]
        assert conn.request_headers["x-custom"] == "1"
        assert [json.loads(f) for f in conn.sent_frames] == conn.sent()
        await conn.send_event(
            {"type": "rate_limits.updated", "event_id": "event_injected", "rate_limits": []}
        )
        assert (await recv_json(ws))["event_id"] == "event_injected"


async def test_fault_refuse_handshake(sim: SimServer) -> None:
    sim.faults.refuse_handshake = 429
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}?model=gpt-realtime") as resp:
            assert resp.status == 429
            assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"


async def text_turn(ws: aiohttp.ClientWebSocketResponse, text: str = "Hello there") -> None:
    await ws.send_json(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    await ws.send_json({"type": "response.create"})


async def test_fault_close_mid_response(sim: SimServer) -> None:
    sim.faults.close_mid_response = 1011
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{sim.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as ws,
    ):
        await recv_json(ws)
        await text_turn(ws)
        types = []
        async for msg in ws:
            types.append(json.loads(msg.data)["type"])
        assert ws.close_code == 1011
    assert "response.created" in types and "response.done" not in types
    assert "response.output_audio.delta" in types


async def test_fault_send_error_stall_and_slow(sim: SimServer) -> None:
    sim.faults.send_error = "server_error"
    sim.faults.stall_seconds = 0.4
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{sim.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as ws,
    ):
        assert (await recv_json(ws))["type"] == "session.created"
        err = await recv_json(ws)
        assert (
            err["type"] == "error"
            and err["error"]["type"] == "server_error"
            and err["error"]["code"] == "server_error"
        )
        await text_turn(ws)
        await recv_until(ws, "response.content_part.added")
        t0 = time.monotonic()
        await recv_until(ws, "response.output_audio.delta")
        assert time.monotonic() - t0 >= 0.35
        await recv_until(ws, "response.done")
        sim.faults.stall_seconds = 0
        sim.faults.slow_factor = 20  # 100 ms deltas at pace 0.02 x 20 = 40 ms each
        await text_turn(ws, "Slowly")
        t0 = time.monotonic()
        events = await recv_until(ws, "response.done")
        deltas = sum(e["type"] == "response.output_audio.delta" for e in events)
        assert time.monotonic() - t0 >= deltas * 0.04 * 0.8
        sim.faults.fail_responses = True
        await text_turn(ws, "Fail please")
        failed = (await recv_until(ws, "response.done"))[-1]["response"]
        assert failed["status"] == "failed" and failed["status_details"]["error"]["type"] == "server_error"
    validate_frames(sim.connections[-1].sent_frames, beta=False)


async def test_session_expiry_sends_error_then_closes() -> None:
    async with SimServer(SimConfig(max_session_seconds=0.3), Faults()) as short:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{short.url}?model=gpt-realtime") as ws:
            await recv_json(ws)
            err = await recv_json(ws, within=3)
            assert err["error"]["code"] == "session_expired"
            msg = await ws.receive(timeout=3)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_cli_serves_until_sigterm(tmp_path: Any) -> None:
    script = tmp_path / "transcripts.txt"
    script.write_text("first line\n\nsecond line\n")
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.sim.cli", "--listen", f"127.0.0.1:{port}", "--api-key", "cli-key",
        "--transcripts", str(script), "--voice-source", "tone",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert f"ws://127.0.0.1:{port}/v1/realtime" in line.decode()
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url, headers={"Authorization": "Bearer cli-key"}) as ws:
                assert (await recv_json(ws))["type"] == "session.created"
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(url, headers={"Authorization": "Bearer nope"})
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_embedded_mode_forgets_closed_connections_and_bench_reply() -> None:
    from relay.sim import start_embedded

    sim = await start_embedded(api_key="emb", voice_source="tone", fixed_reply="Benchmark reply.", pace=0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{sim.url}?model=gpt-realtime", headers={"Authorization": "Bearer emb"}) as ws,
        ):
            await recv_json(ws)
            assert len(sim.connections) == 1 and sim.connections[0].sent_frames == []
            await text_turn(ws, "anything")
            events = await recv_until(ws, "response.done")
            done = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
            assert done["transcript"] == "Benchmark reply."
            # 2 words x 250 ms of beeps = 500 ms, in 100 ms deltas.
            assert sum(e["type"] == "response.output_audio.delta" for e in events) == 5
        for _ in range(500):
            if not sim.connections:
                break
            await asyncio.sleep(0.01)
        assert sim.connections == []
    finally:
        await sim.stop()
