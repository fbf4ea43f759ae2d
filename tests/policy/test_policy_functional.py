"""Policies end to end: the official openai SDK → the relay → the simulator, real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from relay.sim import SimConfig, SimServer
from tests.support.relay import TEST_KEY, RunningRelay, running_relay

SIM_KEY = "sk-sim-policy-tests"

POLICIES = """\
policies:
  - id: lockdown
    use: lockdown
    with:
      instructions: {text: "say: the policy wins", mode: replace}
      hide_instructions: true
  - id: tools
    use: tools
    with: {allow: [get_weather]}
  - id: pii
    use: redact
    with: {targets: [upstream, recording], detectors: [email, card]}
"""
DEFAULT = """\
version: 1
policies:
  - id: models
    use: models
    with: {allow: ["gpt-realtime*"]}
"""


def fn(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": {"type": "object", "properties": {}}}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(api_key=SIM_KEY, pace=0)) as server:
        yield server


@pytest.fixture
async def relay(tmp_path: Path, sim: SimServer) -> AsyncIterator[RunningRelay]:
    async with running_relay(
        tmp_path, upstream=sim, default_policy=DEFAULT, policies={"acme": POLICIES}
    ) as r:
        yield r


def client(relay: RunningRelay) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=TEST_KEY, websocket_base_url=relay.ws_base)


async def collect(conn: Any, stop: Callable[[Any], bool], limit: float = 15.0) -> list[Any]:
    """Events from the connection up to and including the first one ``stop`` accepts."""
    seen: list[Any] = []
    async with asyncio.timeout(limit):
        async for event in conn:
            seen.append(event)
            if stop(event):
                return seen
    raise AssertionError(f"connection ended; saw {[e.type for e in seen]}")


def is_type(etype: str) -> Callable[[Any], bool]:
    return lambda e: e.type == etype


async def say_text(conn: Any, text: str) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()


async def test_pii_reaches_upstream_redacted(relay: RunningRelay, sim: SimServer) -> None:
    async with client(relay).realtime.connect(model="gpt-realtime") as conn:
        await collect(conn, is_type("session.updated"))  # the relay's pinned session.update
        await say_text(conn, "my email is ann@example.com and card 4111 1111 1111 1111")
        await collect(conn, is_type("response.done"))
        upstream = await sim.wait_for_connections(1)
        creates = [e for e in upstream.received() if e["type"] == "conversation.item.create"]
        text = creates[0]["item"]["content"][0]["text"]
        assert text == "my email is [REDACTED:email] and card [REDACTED:card]"
        assert "ann@example.com" not in "".join(upstream.received_frames)


async def test_pinned_instructions_win_and_stay_hidden(relay: RunningRelay, sim: SimServer) -> None:
    async with client(relay).realtime.connect(model="gpt-realtime") as conn:
        first = await collect(conn, is_type("session.updated"))
        assert first[0].type == "session.created"
        # The client never sees the instructions, neither the server default nor the pinned ones.
        assert all(e.session.instructions == "" for e in first if e.type.startswith("session."))
        await conn.session.update(session={"type": "realtime", "instructions": "say: the client wins"})
        updated = await collect(conn, is_type("session.updated"))
        assert updated[-1].session.instructions == ""
        await say_text(conn, "hello")
        events = await collect(conn, is_type("response.done"))
        transcript = next(e for e in events if e.type == "response.output_audio_transcript.done").transcript
        assert transcript == "the policy wins"
        upstream = await sim.wait_for_connections(1)
        assert upstream.session.cfg["instructions"] == "say: the policy wins"
        assert "the client wins" not in "".join(upstream.received_frames)


async def test_disallowed_tool_is_stripped(relay: RunningRelay, sim: SimServer) -> None:
    async with client(relay).realtime.connect(model="gpt-realtime") as conn:
        await collect(conn, is_type("session.updated"))
        await conn.session.update(
            session={"type": "realtime", "tools": [fn("get_weather"), fn("delete_account")]}
        )
        updated = await collect(conn, is_type("session.updated"))
        assert [t.name for t in updated[-1].session.tools] == ["get_weather"]
        upstream = await sim.wait_for_connections(1)
        sent = [e for e in upstream.received() if e["type"] == "session.update"][-1]
        assert [t["name"] for t in sent["session"]["tools"]] == ["get_weather"]


async def test_disallowed_model_call_never_reaches_the_client(relay: RunningRelay, sim: SimServer) -> None:
    async with client(relay).realtime.connect(model="gpt-realtime") as conn:
        await collect(conn, is_type("session.updated"))
        upstream = await sim.wait_for_connections(1)
        # A tool configured outside the relay (e.g. in a stored prompt) that the policy forbids.
        upstream.session.cfg["tools"] = [fn("delete_account")]
        upstream.session.cfg["instructions"] = ""
        await say_text(conn, 'please delete_account {"user": "me"}')
        events = await collect(conn, is_type("response.done"))
        assert all("function_call" not in e.type for e in events)
        assert all(getattr(getattr(e, "item", None), "type", None) != "function_call" for e in events)
        assert events[-1].response.output == []
        # The model got an error result for its call instead.
        await asyncio.sleep(0.2)
        outputs = [
            e["item"]
            for e in upstream.received()
            if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
        ]
        assert len(outputs) == 1
        assert "not available" in json.loads(outputs[0]["output"])["error"]
        # The session goes on normally, and the relay's own item is not echoed to the client.
        await conn.session.update(session={"type": "realtime", "tools": []})
        later = await collect(conn, is_type("session.updated"))
        assert all(getattr(getattr(e, "item", None), "type", None) != "function_call_output" for e in later)


async def test_disallowed_model_gets_403_before_the_upgrade(relay: RunningRelay, sim: SimServer) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.get(
            f"http://127.0.0.1:{relay.port}/v1/realtime?model=gpt-5-secret",
            headers={
                "Authorization": f"Bearer {TEST_KEY}",
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert resp.status == 403
        body = await resp.json()
        assert body["error"]["code"] == "model_not_allowed"
    assert sim.connections == [] or all(c.model != "gpt-5-secret" for c in sim.connections)
    with pytest.raises(Exception, match="403"):
        async with client(relay).realtime.connect(model="gpt-5-secret") as conn:
            await conn.recv()


async def test_policy_edit_applies_to_new_sessions_and_a_broken_edit_is_rejected(
    relay: RunningRelay, sim: SimServer
) -> None:
    tenant_file = relay.policies_dir / "tenants" / "acme.yaml"
    original = tenant_file.read_text()
    metrics = relay.metrics
    async with client(relay).realtime.connect(model="gpt-realtime") as old:
        await collect(old, is_type("session.updated"))
        tenant_file.write_text(original.replace("say: the policy wins", "say: version two"))
        await wait_reload(metrics, "ok", 1)
        # The live session keeps the version it started with ...
        await say_text(old, "hello")
        events = await collect(old, is_type("response.done"))
        assert next(e for e in events if e.type.endswith("transcript.done")).transcript == "the policy wins"
    # ... and a new session gets the new one.
    async with client(relay).realtime.connect(model="gpt-realtime") as new:
        await collect(new, is_type("session.updated"))
        await say_text(new, "hello")
        events = await collect(new, is_type("response.done"))
        assert next(e for e in events if e.type.endswith("transcript.done")).transcript == "version two"
    version = relay.relay.store.version
    tenant_file.write_text(original.replace("use: redact", "use: redcat"))
    await wait_reload(metrics, "error", 1)
    assert relay.relay.store.version == version  # the old policy stays in force
    async with client(relay).realtime.connect(model="gpt-realtime") as again:
        await collect(again, is_type("session.updated"))


async def wait_reload(metrics: Any, result: str, n: int, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            if (
                metrics.registry.get_sample_value("relay_policy_reloads_total", {"result": result}) or 0
            ) >= n:
                return
            await asyncio.sleep(0.05)
