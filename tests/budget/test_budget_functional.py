"""Budgets end to end: the official openai SDK → the relay → the simulator, real sockets.

- A session that exhausts its budget gets the ``error`` event naming it, then a 1008 close; the
  USD the relay counted equals a hand computation from the simulator's usage and pricing.yaml.
- A cancelled response is still billed from its ``response.done`` usage; input seconds equal the
  bytes sent divided by the format's rate.
- Two relay processes sharing one real redis-server refuse with 429 on whichever replica the
  session hits (concurrency, then an exhausted USD budget).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from openai import AsyncOpenAI

from relay.sim import SimConfig, SimServer
from tests.support.redis_server import RedisServer
from tests.support.relay import TEST_KEY, RelayProcess, base_config, running_relay, write_policies

SIM_KEY = "sk-sim-budget-upstream"

# gpt-realtime in the shipped pricing.yaml, USD per 1M tokens: (input, cached input, output)
TEXT = (Decimal("4.00"), Decimal("0.40"), Decimal("16.00"))
AUDIO = (Decimal("32.00"), Decimal("0.40"), Decimal("64.00"))


def hand_cost(usage: Any) -> Decimal:
    """USD of one usage block, written out by hand (docs/budgets.md, Formulas)."""
    ind, outd = usage.input_token_details, usage.output_token_details
    cached = ind.cached_tokens_details
    ct, ca = (cached.text_tokens or 0, cached.audio_tokens or 0) if cached else (0, 0)
    per_million = (
        (ind.text_tokens - ct) * TEXT[0] + ct * TEXT[1]
        + (ind.audio_tokens - ca) * AUDIO[0] + ca * AUDIO[1]
        + outd.text_tokens * TEXT[2] + outd.audio_tokens * AUDIO[2]
    )  # fmt: skip
    return per_million / 1_000_000


@pytest.fixture
async def sim():
    async with SimServer(SimConfig(api_key=SIM_KEY)) as server:
        yield server


async def usage_of(admin: str, tenant: str = "acme") -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{admin}/v1/relay/usage", params={"tenant": tenant}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return orjson.loads(await resp.read())


async def ask(conn: Any, text: str) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()


async def next_of(conn: Any, *types: str, limit: float = 20.0) -> Any:
    async with asyncio.timeout(limit):
        while True:
            event = await conn.recv()
            if event.type in types:
                return event


async def test_session_exhausting_its_budget_gets_the_error_and_1008(tmp_path: Path, sim: SimServer):
    policies = {
        "acme": """
        budgets:
          limits:
            - {name: call_usd, metric: usd, per: session, limit: 0.03, warn_at: 0.5}
          reserve_output_tokens: 100
        """
    }
    async with running_relay(tmp_path, upstream=sim, policies=policies) as relay:
        client = AsyncOpenAI(api_key=relay.key, websocket_base_url=relay.ws_base)
        billed = Decimal(0)
        error = None
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await next_of(conn, "session.updated")
            for turn in range(40):
                await ask(conn, f"Tell me something interesting, number {turn}.")
                event = await next_of(conn, "response.done", "error")
                if event.type == "error":
                    error = event.error
                    break
                billed += hand_cost(event.response.usage)
                if billed >= Decimal("0.03"):
                    error = (await next_of(conn, "error")).error  # after the response: error, then close
                    break
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await next_of(conn, "never")
        assert error is not None and error.code == "budget_exceeded" and error.param == "call_usd"
        assert "call_usd" in error.message
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert billed >= Decimal("0.015"), error.message  # past warn_at before it ran out
        await asyncio.sleep(0.3)  # the session's final ledger write
        report = await usage_of(relay.admin)
        assert report["windows"]["day"]["usd"] == float(billed)  # exact: same decimal, same float
        metrics = relay.metrics.registry
        assert metrics.get_sample_value(
            "relay_cost_usd_total", {"tenant": "acme", "model": "gpt-realtime"}
        ) == pytest.approx(float(billed))
        assert (
            metrics.get_sample_value("relay_budget_warnings_total", {"tenant": "acme", "budget": "call_usd"})
            == 1
        )
        assert (
            metrics.get_sample_value(
                "relay_budget_rejections_total", {"tenant": "acme", "budget": "call_usd"}
            )
            == 1
        )


async def test_cancelled_response_is_billed_and_input_seconds_are_exact(tmp_path: Path, sim: SimServer):
    sim.config.pace = 1.0  # stream in real time, so there is time to cancel
    async with running_relay(tmp_path, upstream=sim) as relay:
        client = AsyncOpenAI(api_key=relay.key, websocket_base_url=relay.ws_base)
        sent = 0
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await next_of(conn, "session.updated")
            for n in (960, 4800, 333, 1):  # PCM16 bytes, odd sizes included
                await conn.input_audio_buffer.append(
                    audio=__import__("base64").b64encode(b"\x10" * n).decode()
                )
                sent += n
            await ask(conn, "Please tell me a long story about the sea and the mountains.")
            await next_of(conn, "response.output_audio.delta")
            await conn.response.cancel()
            done = await next_of(conn, "response.done")
            assert done.response.status == "cancelled" and done.response.usage.output_tokens > 0
            expected = hand_cost(done.response.usage)
        await asyncio.sleep(0.3)
        report = await usage_of(relay.admin)
        assert report["windows"]["day"]["usd"] == float(expected)
        assert report["windows"]["day"]["audio_seconds_in"] == sent / 48000
        metrics = relay.metrics.registry
        assert metrics.get_sample_value(
            "relay_audio_seconds_total", {"tenant": "acme", "direction": "input"}
        ) == pytest.approx(sent / 48000)


async def handshake(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An upgrade request as a client sends it; returns status, JSON body (refusals) and headers."""
    headers = {
        "Authorization": f"Bearer {TEST_KEY}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with aiohttp.ClientSession() as http:
        async with http.get(
            url.replace("ws://", "http://", 1) + "?model=gpt-realtime", headers=headers
        ) as resp:
            body = orjson.loads(await resp.read()) if resp.status != 101 else {}
            return resp.status, body, dict(resp.headers)


async def test_two_relay_processes_share_one_redis(tmp_path: Path, sim: SimServer, redis_server: RedisServer):
    redis_server.flushall()
    write_policies(
        tmp_path / "policies",
        tenants={
            "acme": """
            budgets:
              limits:
                - {name: daily_usd, metric: usd, per: day, limit: 0.015}
              concurrent_sessions: 1
              reserve_output_tokens: 150
            """
        },
    )
    cfg = base_config(
        tmp_path, budgets={"store": redis_server.url}, upstream={"url": sim.url, "api_key": SIM_KEY}
    )
    # Two replicas: one Redis, and (as in the chart) a spool of their own each.
    cfg_b = {**cfg, "recording": {**cfg["recording"], "spool_dir": str(tmp_path / "spool-b")}}
    a, b = RelayProcess(cfg, tmp_path), RelayProcess(cfg_b, tmp_path)
    try:
        # inside the try: if one replica fails to start, the other is still stopped by its PID
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        client_a = AsyncOpenAI(api_key=TEST_KEY, websocket_base_url=a.ws_base)
        async with client_a.realtime.connect(model="gpt-realtime") as conn:
            await next_of(conn, "session.created")
            status, body, headers = await handshake(b.url)
            assert status == 429 and body["error"]["code"] == "concurrency_limit"
            assert int(headers["Retry-After"]) > 0
            status, body, _ = await handshake(a.url)  # the same on the replica that holds it
            assert status == 429 and body["error"]["code"] == "concurrency_limit"
        # The slot is freed when a's session ends; spend the day's budget on b.
        client_b = AsyncOpenAI(api_key=TEST_KEY, websocket_base_url=b.ws_base)
        for _ in range(50):
            try:
                cm = client_b.realtime.connect(model="gpt-realtime")
                conn = await cm.__aenter__()
                break
            except Exception:  # noqa: BLE001 - still 429 until a's release lands
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("replica b never admitted a session after a's ended")
        try:
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await next_of(conn, "session.updated")
            for turn in range(40):
                await ask(conn, f"Say something, turn {turn}.")
                event = await next_of(conn, "response.done", "error")
                if event.type == "error":
                    assert event.error.code == "budget_exceeded" and event.error.param == "daily_usd"
                    break
            else:
                raise AssertionError("the budget never ran out")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await next_of(conn, "never")
            assert closed.value.rcvd.code == 1008
        finally:
            await cm.__aexit__(None, None, None)
        await asyncio.sleep(0.3)
        for replica in (a, b):
            status, body, headers = await handshake(replica.url)
            assert status == 429 and body["error"]["code"] == "budget_exceeded"
            assert "daily_usd" in body["error"]["message"] and int(headers["Retry-After"]) > 0
        report = await usage_of(a.admin)
        assert report["store"] == "redis" and report["budgets"][0]["used"] > 0
        assert (await usage_of(b.admin))["windows"]["day"]["usd"] == report["windows"]["day"]["usd"]
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
