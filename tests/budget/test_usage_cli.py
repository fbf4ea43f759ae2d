"""The usage endpoint of a running relay and ``relay usage`` against it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest
from openai import AsyncOpenAI

from relay.budget.cli import admin_url, render
from relay.cli import main
from relay.sim import SimConfig, SimServer
from tests.support.relay import ROOT, free_port, running_relay

POLICY = {
    "acme": """
    budgets:
      limits:
        - {name: daily_usd, metric: usd, per: day, limit: 5, warn_at: 0.8}
        - {name: call_audio, metric: audio_seconds, per: session, limit: 600}
      concurrent_sessions: 3
    """
}


async def relay_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "usage", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def relay_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``relay usage`` through the real entry point, in a thread (quicker than a process)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["usage", *args])
    out, err = capsys.readouterr()
    return code, out, err


async def test_usage_endpoint_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    async with (
        SimServer(SimConfig(api_key="sk-u")) as sim,
        running_relay(tmp_path, upstream=sim, policies=POLICY) as relay,
    ):
        client = AsyncOpenAI(api_key=relay.key, websocket_base_url=relay.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hello there"}],
                }
            )
            await conn.response.create()
            async with asyncio.timeout(20):
                async for event in conn:
                    if event.type == "response.done":
                        break
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{relay.admin}/v1/relay/usage", params={"tenant": "acme"}) as resp:
                    live = await resp.json()
            assert live["concurrent_sessions"] == {"limit": 3, "active": 1, "remaining": 2}
            (session_budget,) = [b for b in live["budgets"] if b["per"] == "session"]
            assert session_budget["name"] == "call_audio" and len(session_budget["sessions_here"]) == 1
        await asyncio.sleep(0.3)

        code, out, err = await relay_cli("--tenant", "acme", "--admin", relay.admin, "--json")
        assert code == 0, err
        body = json.loads(out)
        daily = body["budgets"][0]
        assert daily["name"] == "daily_usd" and daily["unit"] == "USD" and daily["limit"] == 5
        assert 0 < daily["used"] < 5 and daily["remaining"] == pytest.approx(5 - daily["used"])
        assert daily["window"]["resets_at"].endswith("T00:00:00Z") and body["store"] == "memory"

        code, out, err = await relay_main(capsys, "--tenant", "acme", "--admin", relay.admin)
        assert code == 0, err
        assert "daily_usd" in out and "call_audio" in out and "concurrent sessions: 0 of 3" in out

        code, _, err = await relay_main(capsys, "--tenant", "nobody", "--admin", relay.admin)
        assert code == 1 and "404" in err and "nobody" in err
    code, _, err = await relay_main(capsys, "--tenant", "acme", "--admin", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot query" in err


def test_default_admin_url_comes_from_the_configuration(tmp_path: Path):
    cfg = tmp_path / "relay.yaml"
    cfg.write_text("admin_listen: 0.0.0.0:9555\n")
    args = argparse.Namespace(admin=None, config=str(cfg))
    assert admin_url(args) == "http://127.0.0.1:9555"
    args = argparse.Namespace(admin="http://relay-admin:9464/", config=None)
    assert admin_url(args) == "http://relay-admin:9464"


def test_render_handles_an_empty_report():
    text = render({"tenant": "t", "store": "redis", "store_available": False, "as_of": "x", "budgets": []})
    assert "UNAVAILABLE" in text and "no budgets" in text
