"""The relay as a real process: SIGTERM drains, and a client that stops reading stays bounded."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from relay.sim import SimServer
from tests.core.conftest import SIM_KEY
from tests.support.relay import TEST_KEY, RelayProcess, base_config, write_policies

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def process_config(tmp: Path, upstream_url: str, **overrides: object) -> dict[str, object]:
    write_policies(tmp / "policies")
    cfg = base_config(tmp, **overrides)
    cfg["upstream"] = {"url": upstream_url, "api_key": SIM_KEY}
    return cfg


async def text_turn(ws: aiohttp.ClientWebSocketResponse, text: str) -> dict[str, object]:
    await ws.send_json(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }  # fmt: skip
    )
    await ws.send_json({"type": "response.create"})
    async with asyncio.timeout(15):
        while True:
            event = orjson.loads((await ws.receive()).data)
            if event["type"] == "response.done":
                return dict(event)


async def test_sigterm_drains_a_live_session_then_exits(tmp_path: Path, sim: SimServer) -> None:
    proc = RelayProcess(
        process_config(tmp_path, sim.url, drain_seconds=20, log_level="info"), tmp_path
    ).start()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{proc.url}?model=gpt-realtime", headers=AUTH)
            assert (await ws.receive_json())["type"] == "session.created"
            await ws.send_json(
                {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
            )
            proc.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert proc.http_status("/readyz") == 503
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{proc.url}?model=gpt-realtime", headers=AUTH)
            assert refused.value.status == 503
            # the live session keeps working while the relay drains
            done = await text_turn(ws, "still here while draining")
            assert "still here while draining" in orjson.dumps(done).decode()
            await ws.close()
        assert proc.wait(15) == 0
    finally:
        proc.stop()
    lines = [orjson.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    closes = [line for line in lines if line["msg"] == "session close"]
    assert len(closes) == 1 and closes[0]["tenant"] == "acme" and closes[0]["session_id"].startswith("rs_")
    assert closes[0]["client_close_code"] == 1000 and closes[0]["events_client_to_upstream"] == 3
    assert SIM_KEY not in proc.logs() and TEST_KEY not in proc.logs()


async def test_drain_timeout_closes_live_sessions_with_1001(tmp_path: Path, sim: SimServer) -> None:
    proc = RelayProcess(process_config(tmp_path, sim.url, drain_seconds=1), tmp_path).start()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{proc.url}?model=gpt-realtime", headers=AUTH)
            assert (await ws.receive_json())["type"] == "session.created"
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass
            assert ws.close_code == 1001
            assert 0.8 < time.monotonic() - started < 6
        assert proc.wait(15) == 0
    finally:
        proc.stop()


@pytest.fixture
async def flooding_upstream() -> AsyncIterator[tuple[str, list[int]]]:
    """An upstream that streams 64 KiB audio deltas as fast as the relay will take them."""
    sent: list[int] = [0]
    delta = "A" * 65536
    frame = '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"' + delta + '"}'

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await ws.send_str('{"type":"session.created","session":{"type":"realtime"}}')
        deadline = time.monotonic() + 30
        while not ws.closed and time.monotonic() < deadline:
            await ws.send_str(frame)
            sent[0] += 1
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    yield f"ws://127.0.0.1:{port}/v1/realtime", sent
    await runner.cleanup()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_client_that_stops_reading_keeps_relay_memory_bounded(
    tmp_path: Path, flooding_upstream: tuple[str, list[int]]
) -> None:
    url, sent = flooding_upstream
    cfg = process_config(tmp_path, url, recording={"enabled": False}, drain_seconds=1)
    proc = RelayProcess(cfg, tmp_path).start()
    try:
        assert proc.proc is not None
        before = rss_kb(proc.proc.pid)
        # a raw socket that completes the upgrade and then never reads again
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(
            (
                f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1:{proc.port}\r\n"
                f"Authorization: Bearer {TEST_KEY}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await reader.readline()
        assert b"101" in status
        await asyncio.sleep(3)
        sent_mid, rss_mid = sent[0], rss_kb(proc.proc.pid)
        await asyncio.sleep(2)
        sent_end, rss_end = sent[0], rss_kb(proc.proc.pid)
        writer.close()
        # the relay stopped pulling from upstream: a few MiB of socket buffers, not 30 s of flood
        assert sent_end - sent_mid < 20, (sent_mid, sent_end)
        assert rss_end - before < 48 * 1024, (before, rss_mid, rss_end)
        assert rss_end - rss_mid < 4 * 1024, (rss_mid, rss_end)
    finally:
        proc.stop()
