"""The benchmark's two traffic endpoints: a voice-session upstream and a voice-session client.

Traffic model (docs/performance-notes.md): the client streams ``input_audio_buffer.append`` with
20 ms of PCM16 24 kHz audio (50 events/s); the upstream streams ``response.output_audio.delta``
with 100 ms chunks (10/s) and ``response.output_audio_transcript.delta`` (5/s); full duplex, real
time. Every frame carries its send time (``time.monotonic_ns``, one clock for every process on the
machine) in ``event_id``, so the receiving side measures one-way latency. The same peers run
direct (client → upstream) and through the relay, and the difference is what the relay adds.

Rules:
- The load generator must stay far lighter than what it measures: both peers run on raw asyncio
  protocols (``bench.wire``), every frame is pre-encoded but for its stamp and leaves in one
  ``transport.write``, receivers look no further than the stamp, and each process has one ticker
  for all its sessions (never a task or timer per session or per frame).
- Sessions are spread over ten slots of the frame period (2 ms for the clients, 10 ms for the
  upstream), as independent calls would be: a burst of every session's frame at the same
  instant would measure queueing, not the relay.
- The upstream speaks the Realtime event shapes a relay inspects (``session.created`` with a GA
  session, audio and transcript deltas), tolerates any other frame, but models no conversation:
  for protocol behaviour the tests use ``relay.sim``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
from urllib.parse import urlsplit

import orjson

from bench.wire import (
    HEAD_LIMIT,
    OP_TEXT,
    FramedProtocol,
    Latencies,
    TextFrame,
    accept_key,
    has_token,
    header,
    parse_head,
    stamp_of,
)

__all__ = ["BenchClients", "BenchUpstream", "Latencies", "stamp_of"]

SLOTS = 10
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
_SESSION_CREATED_FRAME = header(OP_TEXT, len(SESSION_CREATED)) + SESSION_CREATED.encode()
# Each frame is HEAD + decimal monotonic_ns + TAIL; the JSON is exactly what a formatted string gave.
_APPEND = (b'{"type":"input_audio_buffer.append","event_id":"b', f'","audio":"{CLIENT_CHUNK}"}}'.encode())
_DELTA_IDS = b'","response_id":"resp_b","item_id":"item_b","output_index":0,"content_index":0,"delta":"'
_AUDIO = (
    b'{"type":"response.output_audio.delta","event_id":"b',
    _DELTA_IDS + UPSTREAM_CHUNK.encode() + b'"}',
)
_TRANSCRIPT = (
    b'{"type":"response.output_audio_transcript.delta","event_id":"b',
    _DELTA_IDS + b'hello there "}',
)


class BenchUpstream:
    """A raw-asyncio WebSocket server acting as the Realtime upstream for the benchmark.

    ``received`` holds the client → upstream latencies, ``live`` the upgraded connections,
    ``errors`` one line per failed handshake or protocol error, ``skipped`` the frames not sent
    because a peer stopped reading.
    """

    def __init__(self) -> None:
        self.received = Latencies()
        self.live: set[_UpstreamSide] = set()
        self.errors: list[str] = []
        self.skipped = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._slots: list[dict[_UpstreamSide, None]] = [{} for _ in range(SLOTS)]
        self._joined = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _UpstreamSide(self), host, port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._stream())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        conns = list(self.live)
        for conn in conns:
            conn.close(1001)
        if conns:
            await asyncio.wait([c.lost for c in conns], timeout=2)
        for conn in conns:
            if conn.transport is not None and not conn.lost.done():
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def _join(self, conn: _UpstreamSide) -> None:
        self.live.add(conn)
        conn.slot = self._joined % SLOTS
        self._joined += 1
        self._slots[conn.slot][conn] = None

    def _leave(self, conn: _UpstreamSide) -> None:
        self.live.discard(conn)
        if conn.slot >= 0:
            self._slots[conn.slot].pop(conn, None)

    async def _stream(self) -> None:
        audio, transcript = TextFrame(*_AUDIO), TextFrame(*_TRANSCRIPT)
        ns = time.monotonic_ns
        tick = 0
        next_at = time.monotonic()
        while True:
            with_transcript = (tick // SLOTS) % 2 == 0
            for conn in self._slots[tick % SLOTS]:
                if not conn.open:
                    continue
                if conn.paused:
                    self.skipped += 1 + with_transcript
                    continue
                conn.write(audio.build(b"%d" % ns()))
                if with_transcript:
                    conn.write(transcript.build(b"%d" % ns()))
            tick += 1
            next_at += 0.1 / SLOTS
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


class _UpstreamSide(FramedProtocol):
    """One upstream connection: the server side of the handshake, then ``session.created``."""

    def __init__(self, owner: BenchUpstream) -> None:
        super().__init__(owner.received, owner.errors, client=False)
        self.owner = owner
        self.slot = -1
        self._head = bytearray()

    def handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > HEAD_LIMIT:
                self._refuse(431, "request head too large")
            return
        rest = bytes(self._head[end + 4 :])
        line, headers = parse_head(bytes(self._head[:end]))
        self._head = bytearray()
        status, problem = _check_upgrade(line, headers)
        if status:
            self._refuse(status, problem)
            return
        accept = accept_key(headers["sec-websocket-key"])
        self.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        self.write(_SESSION_CREATED_FRAME)
        self.owner._join(self)  # noqa: SLF001
        self.upgraded_with(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.owner._leave(self)  # noqa: SLF001

    def _refuse(self, status: int, problem: str) -> None:
        self.errors.append(f"refused a handshake: {status} {problem}")
        body = problem.encode()
        self.write(
            f"HTTP/1.1 {status} Refused\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        assert self.transport is not None
        self.transport.close()


def _check_upgrade(line: str, headers: dict[str, str]) -> tuple[int, str]:
    """(0, "") for a valid WebSocket upgrade to /v1/realtime, else the status and the problem."""
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
        return 400, "not an HTTP/1.1 GET"
    if parts[1].split("?", 1)[0] != "/v1/realtime":
        return 404, "not found"
    if headers.get("upgrade", "").lower() != "websocket" or not has_token(
        headers.get("connection", ""), "upgrade"
    ):
        return 400, "not a WebSocket upgrade"
    if headers.get("sec-websocket-version") != "13":
        return 426, "WebSocket version 13 only"
    try:
        if len(base64.b64decode(headers.get("sec-websocket-key", ""), validate=True)) != 16:
            return 400, "bad Sec-WebSocket-Key"
    except binascii.Error:
        return 400, "bad Sec-WebSocket-Key"
    return 0, ""


class BenchClients:
    """N voice sessions sending 20 ms appends in real time from one shared ticker.

    ``latencies`` receives the upstream → client latencies; ``errors`` gets one line per failed
    connect or handshake (with the HTTP status), protocol error, lost connection or close the
    server started; ``skipped`` counts frames not sent because the server stopped reading.
    """

    def __init__(self, url: str, key: str, latencies: Latencies) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"the bench clients speak plain ws:// only, not {url!r}")
        self.url = url
        self.key = key
        self.latencies = latencies
        self.errors: list[str] = []
        self.skipped = 0
        self._host, self._port = parts.hostname, parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n"
        )

    async def run(self, sessions: int, seconds: float, start_at: float) -> None:
        """Open ``sessions`` connections, stream from ``start_at`` for ``seconds``, then close."""
        opened = await asyncio.gather(*(self._open() for _ in range(sessions)))
        conns = [c for c in opened if c is not None]
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        groups = [conns[i::SLOTS] for i in range(SLOTS)]
        ns = time.monotonic_ns
        tick = 0
        next_at = time.monotonic()
        end = next_at + seconds
        while next_at < end:
            for conn in groups[tick % SLOTS]:
                if conn.open:
                    if conn.paused:
                        self.skipped += 1
                    else:
                        conn.write(conn.append.build(b"%d" % ns()))
            tick += 1
            next_at += 0.02 / SLOTS
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        for conn in conns:
            conn.close()
        pending = [c.lost for c in conns if not c.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        for conn in conns:
            if conn.transport is not None and not conn.lost.done():
                conn.transport.abort()

    async def _open(self) -> _ClientSide | None:
        loop = asyncio.get_running_loop()
        conn: _ClientSide | None = None
        try:
            async with asyncio.timeout(30):
                _, conn = await loop.create_connection(lambda: _ClientSide(self), self._host, self._port)
                if await conn.upgrade:
                    return conn
        except (OSError, TimeoutError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        return None


class _ClientSide(FramedProtocol):
    """One client connection: the client side of the handshake, then appends from the ticker."""

    def __init__(self, owner: BenchClients) -> None:
        super().__init__(owner.latencies, owner.errors, client=True)
        self.report_peer_close = True
        self.append = TextFrame(*_APPEND, mask=self.mask)
        self.upgrade: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._request = f"{owner._request}Sec-WebSocket-Key: {self._key}\r\n\r\n".encode()  # noqa: SLF001
        self._head = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(self._request)

    def handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > HEAD_LIMIT:
                self._refused("handshake: response head too large")
            return
        rest = bytes(self._head[end + 4 :])
        line, headers = parse_head(bytes(self._head[:end]))
        self._head = bytearray()
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self._refused(f"handshake: not an HTTP response: {line[:80]!r}")
        elif parts[1] != "101":
            body = rest[:200].decode("utf-8", "replace")
            self._refused(f"handshake refused: HTTP {' '.join(parts[1:])}" + (f": {body}" if body else ""))
        elif headers.get("upgrade", "").lower() != "websocket" or not has_token(
            headers.get("connection", ""), "upgrade"
        ):
            self._refused("handshake: 101 without Upgrade: websocket / Connection: Upgrade")
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            self._refused("handshake: wrong Sec-WebSocket-Accept")
        elif "sec-websocket-extensions" in headers:
            self._refused(f"handshake: extension not offered: {headers['sec-websocket-extensions']}")
        else:
            if not self.upgrade.done():
                self.upgrade.set_result(True)
            self.upgraded_with(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.upgrade.done():
            self.errors.append(
                f"handshake: connection lost ({exc!r})" if exc else "handshake: connection closed"
            )
            self.upgrade.set_result(False)

    def _refused(self, problem: str) -> None:
        self.errors.append(problem)
        if not self.upgrade.done():
            self.upgrade.set_result(False)
        assert self.transport is not None
        self.transport.close()
