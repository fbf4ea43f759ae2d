"""A rolling update as the chart performs it, with real processes, a real Redis and the official
openai client: the old pod drains its live call to completion while the new pod takes new calls.

Both "pods" run the chart's own container command, rendered relay.yaml, policies ConfigMap and
secret-sourced environment (tests/deploy/pods.py); the standalone simulator process stands in for
api.openai.com. The sequence follows the chart's strategy (maxSurge 1, maxUnavailable 0):

1. the old pod serves a live session;
2. the new pod starts and becomes ready;
3. the old pod gets SIGTERM (after its preStop): readiness fails, liveness (and the image's
   HEALTHCHECK) still pass, new sessions get 503 — while the live session keeps working;
4. new sessions land on the new pod; both pods admit against one Redis (the tenant's concurrency
   limit counts sessions on both);
5. the client ends the live call; the old pod exits cleanly, well inside the grace period.
A second test holds a session past drain_seconds: it is closed with 1001 and the process exits
before the chart's terminationGracePeriodSeconds would have SIGKILLed it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.deploy.chart_support import ROOT, objects, render
from tests.deploy.pods import ChartPod, SimProcess, free_port
from tests.support.redis_server import RedisServer

SIM_KEY = "sk-sim-upstream-for-the-rollout"
TENANT_KEY = "rr-rollout-test-key-acme-0123456789"
ROLLOUT_DRAIN = 20
"""Generous: the rollout test never waits for it (its call ends first), it only bounds the steps."""
SHORT_DRAIN = 4
"""For the call that outlives the drain: the test waits this long."""
MODEL = "gpt-realtime"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    process = SimProcess(tmp_path_factory.mktemp("sim"), SIM_KEY).start()
    try:
        yield process
    finally:
        process.stop()


def chart_release(sim: SimProcess, drain_seconds: float) -> list[dict[str, Any]]:
    """The release: OpenAI key and Redis URL from Secrets, one tenant limited to 2 live sessions."""
    tenant = (
        "version: 1\n"
        f"keys:\n  - {{id: acme-1, sha256: {hashlib.sha256(TENANT_KEY.encode()).hexdigest()}}}\n"
        "budgets:\n  concurrent_sessions: 2\n"
    )
    values = {
        "config": {"drain_seconds": drain_seconds, "log_level": "info", "upstream": {"url": sim.url}},
        "secrets": {
            "openai": {"existingSecret": "openai-upstream", "key": "api-key"},
            "redis": {"existingSecret": "relay-redis", "key": "url"},
        },
        "policies": {"tenants": {"acme": tenant}},
    }
    return objects(render(values))


@pytest.fixture
def pods(
    tmp_path: Path, sim: SimProcess, redis_server: RedisServer
) -> Iterator[Callable[[str, float], ChartPod]]:
    """``pods(name, drain_seconds)``: a pod of the release (not started); killed at teardown."""
    redis_server.flushall()
    secrets = {"openai-upstream": {"api-key": SIM_KEY}, "relay-redis": {"url": redis_server.url}}
    started: list[ChartPod] = []

    def make(name: str, drain_seconds: float) -> ChartPod:
        pod = ChartPod(chart_release(sim, drain_seconds), secrets, tmp_path, name)
        started.append(pod)
        return pod

    try:
        yield make
    finally:
        for pod in started:
            pod.kill()


async def until(conn: Any, etype: str, limit: float = 15.0) -> Any:
    async with asyncio.timeout(limit):
        async for event in conn:
            if event.type == "error":
                raise AssertionError(f"error event: {event}")
            if event.type == etype:
                return event
    raise AssertionError(f"connection ended before {etype}")


async def turn(conn: Any, text: str) -> None:
    """One text-in, speech-out exchange through the relay."""
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()
    done = await until(conn, "response.done")
    assert done.response.status == "completed", done


async def handshake_status(ws_base: str) -> int:
    """HTTP status the relay answers an upgrade with (101 when the session opens)."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(
                f"{ws_base}/realtime?model={MODEL}", headers={"Authorization": f"Bearer {TENANT_KEY}"}
            )
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


def session_closes(pod: ChartPod) -> list[dict[str, Any]]:
    """The relay's one-line-per-session close records from the pod's JSON log."""
    lines = [json.loads(line) for line in pod.logs().splitlines() if line.startswith("{")]
    return [rec for rec in lines if rec.get("msg") == "session close"]


def docker_healthcheck(admin_port: int) -> int:
    """The Dockerfile's HEALTHCHECK command, run as is against ``admin_port``."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    argv = json.loads(re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert argv[0] == "python" and "127.0.0.1:9464" in argv[2]
    argv = [sys.executable, *argv[1:-1], argv[-1].replace("127.0.0.1:9464", f"127.0.0.1:{admin_port}")]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode


async def test_rolling_restart_drains_the_live_call_while_the_new_pod_serves(
    pods: Callable[[str, float], ChartPod], redis_server: RedisServer
) -> None:
    old = await asyncio.to_thread(pods("old", ROLLOUT_DRAIN).start)
    live_client = AsyncOpenAI(api_key=TENANT_KEY, websocket_base_url=old.ws_base)
    async with live_client.realtime.connect(model=MODEL) as live:
        await until(live, "session.created")
        await turn(live, "Hello before the rollout.")

        # maxSurge 1, maxUnavailable 0: the new pod is ready before the old one is stopped.
        new = await asyncio.to_thread(pods("new", ROLLOUT_DRAIN).start)

        old.terminate()
        terminated_at = time.monotonic()
        await eventually(lambda: old.probe("/readyz") == 503, 3, "old pod reports not ready")
        # Liveness must keep passing while draining, or the kubelet would restart the container
        # and cut the call; the image's own HEALTHCHECK must agree.
        assert old.probe("/healthz") == 200
        assert await asyncio.to_thread(docker_healthcheck, old.admin_port) == 0
        assert await asyncio.to_thread(docker_healthcheck, free_port()) != 0
        # Anything still routed to the old pod is refused with 503 and told to retry.
        assert await handshake_status(old.ws_base) == 503
        assert new.probe("/readyz") == 200

        # New calls land on the new pod. Both pods admit against the same Redis: with one session
        # on each, the tenant is at its limit of 2, so a third is refused by the new pod.
        fresh_client = AsyncOpenAI(api_key=TENANT_KEY, websocket_base_url=new.ws_base)
        async with fresh_client.realtime.connect(model=MODEL) as fresh:
            await until(fresh, "session.created")
            await turn(fresh, "Hello from a new call.")
            assert await handshake_status(new.ws_base) == 429

        # The call on the draining pod goes on as if nothing happened.
        await turn(live, "Still there during the rollout?")
        assert old.exit_code() is None, "the old pod must wait for its live call"
        assert time.monotonic() - terminated_at < ROLLOUT_DRAIN

    # The client hung up: the drain is over early and the old process exits cleanly.
    assert await asyncio.to_thread(old.wait, 10) == 0, old.logs()
    assert time.monotonic() - terminated_at < ROLLOUT_DRAIN, "the drain ends with the last call"
    (closed,) = session_closes(old)
    assert closed["closed_by"] == "client" and closed["client_close_code"] == 1000, closed

    # The old pod's session slot is gone from Redis: the tenant has room for two calls again.
    client = AsyncOpenAI(api_key=TENANT_KEY, websocket_base_url=new.ws_base)
    async with client.realtime.connect(model=MODEL) as one, client.realtime.connect(model=MODEL) as two:
        await until(one, "session.created")
        await until(two, "session.created")
    assert int(redis_server.command("DBSIZE").split(b":")[1]) > 0, "budgets never reached Redis"


async def test_a_call_outliving_the_drain_is_closed_inside_the_grace_period(
    pods: Callable[[str, float], ChartPod],
) -> None:
    pod = await asyncio.to_thread(pods("lingering", SHORT_DRAIN).start)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"{pod.ws_base}/realtime?model={MODEL}", headers={"Authorization": f"Bearer {TENANT_KEY}"}
        )
        first = await ws.receive_json(timeout=10)
        assert first["type"] == "session.created"
        pod.terminate()
        terminated_at = time.monotonic()
        async with asyncio.timeout(SHORT_DRAIN + 10):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    break
        closed_after = time.monotonic() - terminated_at
        assert ws.close_code == 1001
    # The relay waited the whole drain for the call to end on its own, no less...
    assert closed_after >= SHORT_DRAIN - 0.5
    # ...and then exited before the kubelet's SIGKILL (grace period minus the preStop sleep).
    assert await asyncio.to_thread(pod.wait, 15) == 0, pod.logs()
    exited_after = time.monotonic() - terminated_at
    prestop_sleep = float(pod.prestop[1])
    assert exited_after < pod.grace - prestop_sleep, (exited_after, pod.grace)
    assert exited_after < SHORT_DRAIN + 5, "shutdown after the drain must be quick"
    (closed,) = session_closes(pod)
    assert closed["client_close_code"] == 1001, closed
