"""The benchmark's two traffic endpoints: a voice-session upstream and a voice-session client.

Traffic model (docs/performance-notes.md): the client streams ``input_audio_buffer.append`` with
20 ms of PCM16 24 kHz audio (50 events/s); the upstream streams ``response.output_audio.delta``
with 100 ms chunks (10/s) and ``response.output_audio_transcript.delta`` (5/s); full duplex, real
time. Every frame carries its send time (``time.monotonic_ns``, one clock for every process on the
machine) in ``event_id``, so the receiving side measures one-way latency. The same peers run
direct (client → upstream) and through the relay, and the difference is what the relay adds.

The upstream speaks the Realtime event shapes a relay inspects (``session.created`` with a GA
session, audio and transcript deltas) but models no conversation: for protocol behaviour the
tests use ``relay.sim``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import os
import time

import aiohttp
import orjson
from aiohttp import WSMsgType, web

CLIENT_CHUNK = base64.b64encode(os.urandom(960)).decode()  # 20 ms PCM16 24 kHz
UPSTREAM_CHUNK = base64.b64encode(os.urandom(4800)).decode()  # 100 ms
SESSION_CREATED = orjson.dumps(
    {
        "type": "session.created",
        "event_id": "event_bench",
        "session": {
            "type": "realtime",
            "object": "realtime.session",
            "id": "sess_bench",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
            },
        },
    }
).decode()


def stamp_of(text: str) -> int:
    """The send time in ``"event_id":"b<ns>"``; -1 if absent."""
    i = text.find('"event_id":"b')
    if i < 0:
        return -1
    j = text.find('"', i + 13)
    try:
        return int(text[i + 13 : j])
    except ValueError:
        return -1


class Latencies:
    """One-way latencies in µs, appended to a compact array (no per-sample objects)."""

    def __init__(self) -> None:
        self.samples = array.array("q")
        self.recording = False

    def add(self, sent_ns: int) -> None:
        if self.recording and sent_ns > 0:
            self.samples.append((time.monotonic_ns() - sent_ns) // 1000)


class BenchUpstream:
    """An aiohttp server acting as the Realtime upstream for the benchmark.

    One ticker streams to every live session (one wake-up per 100 ms, not one per session), so
    the load generator stays light enough to measure the relay rather than itself.
    """

    def __init__(self) -> None:
        self.received = Latencies()
        self.live: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._session)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        self._ticker = asyncio.create_task(self._stream())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _session(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(SESSION_CREATED)
        self.live.add(ws)
        add = self.received.add
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    add(stamp_of(msg.data))
        finally:
            self.live.discard(ws)
        return ws

    async def _stream(self) -> None:
        # Sessions are spread over ten 10 ms slots, as independent calls would be: a burst of
        # every session's delta at the same instant would measure queueing, not the relay.
        slots = 10
        tick = 0
        next_at = time.monotonic()
        while True:
            slot = tick % slots
            transcript = (tick // slots) % 2 == 0
            for i, ws in enumerate(list(self.live)):
                if i % slots != slot or ws.closed:
                    continue
                try:
                    await ws.send_str(
                        f'{{"type":"response.output_audio.delta","event_id":"b{time.monotonic_ns()}","response_id":"resp_b",'
                        f'"item_id":"item_b","output_index":0,"content_index":0,"delta":"{UPSTREAM_CHUNK}"}}'
                    )
                    if transcript:
                        await ws.send_str(
                            f'{{"type":"response.output_audio_transcript.delta","event_id":"b{time.monotonic_ns()}",'
                            f'"response_id":"resp_b","item_id":"item_b","output_index":0,"content_index":0,'
                            f'"delta":"hello there "}}'
                        )
                except ConnectionError:
                    continue
            tick += 1
            next_at += 0.1 / slots
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


class BenchClients:
    """N voice sessions sending 20 ms appends in real time from one shared ticker."""

    def __init__(self, url: str, key: str, latencies: Latencies) -> None:
        self.url = url
        self.key = key
        self.latencies = latencies
        self.errors: list[str] = []

    async def run(self, http: aiohttp.ClientSession, sessions: int, seconds: float, start_at: float) -> None:
        opened = await asyncio.gather(*(self._open(http) for _ in range(sessions)))
        sockets = [ws for ws in opened if ws is not None]
        readers = [asyncio.create_task(self._read(ws)) for ws in sockets]
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        # Sessions spread over ten 2 ms slots of the 20 ms frame period (see BenchUpstream).
        slots = 10
        groups = [sockets[i::slots] for i in range(slots)]
        tick = 0
        next_at = time.monotonic()
        end = next_at + seconds
        while next_at < end:
            for ws in groups[tick % slots]:
                if not ws.closed:
                    try:
                        await ws.send_str(
                            f'{{"type":"input_audio_buffer.append","event_id":"b{time.monotonic_ns()}","audio":"{CLIENT_CHUNK}"}}'
                        )
                    except ConnectionError as exc:
                        self.errors.append(f"send: {exc}")
            tick += 1
            next_at += 0.02 / slots
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    async def _open(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse | None:
        try:
            return await http.ws_connect(
                self.url, headers={"Authorization": f"Bearer {self.key}"}, compress=0, max_msg_size=0
            )
        except (aiohttp.ClientError, OSError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        add = self.latencies.add
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                add(stamp_of(msg.data))
