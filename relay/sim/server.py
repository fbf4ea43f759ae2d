"""The simulator's aiohttp server: handshake, auth, dialect, and the per-connection pumps.

Rules of this module:
- Everything protocol-shaped lives in ``SimSession``; this module only moves frames. Per
  connection two tasks write: the reader (replies to client events) and the response pump
  (paced batches). Both compute and send under one lock, so the order the session produced is
  the order on the wire.
- Handshake order: faults (refusal), key check (401 before the upgrade, OpenAI's JSON body),
  query check, dialect (``OpenAI-Beta: realtime=v1`` header or ``openai-beta.realtime-v1``
  subprotocol → beta), then the upgrade answering ``realtime`` when offered. No compression.
- ``SimConnection`` records what was received and sent (exact text) and the handshake, so other
  tests can assert byte-identical forwarding and key swapping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from relay.sim.config import Faults, SimConfig
from relay.sim.session import SessionOptions, SimSession, default_transcript

REALTIME_PATH = "/v1/realtime"
KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"


def _http_error(status: int, message: str, code: str | None, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.json_response(body, status=status)


def presented_key(request: web.Request) -> str | None:
    """The API key of an upgrade request: Bearer, ``api-key`` header, or key subprotocol."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if "api-key" in request.headers:
        return request.headers["api-key"].strip()
    for proto in offered_protocols(request):
        if proto.startswith(KEY_PROTOCOL):
            return proto[len(KEY_PROTOCOL) :]
    return None


def offered_protocols(request: web.Request) -> list[str]:
    raw = request.headers.getall("Sec-WebSocket-Protocol", [])
    return [p.strip() for line in raw for p in line.split(",") if p.strip()]


def _mask(key: str) -> str:
    return f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"


@dataclass(eq=False)
class SimConnection:
    """What one client connection did; kept by the server for tests to inspect."""

    path: str
    query: dict[str, str]
    request_headers: CIMultiDict[str]
    api_key: str | None
    beta: bool
    model: str
    protocol: str | None = None
    session: SimSession | None = None
    received_frames: list[str] = field(default_factory=list)
    sent_frames: list[str] = field(default_factory=list)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def dialect(self) -> str:
        return "beta" if self.beta else "ga"

    def received(self) -> list[dict[str, Any]]:
        return [orjson.loads(t) for t in self.received_frames]

    def sent(self) -> list[dict[str, Any]]:
        return [orjson.loads(t) for t in self.sent_frames]

    def received_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.received()]

    def sent_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.sent()]

    async def send_event(self, event: dict[str, Any]) -> None:
        """Inject any server event on this live connection."""
        async with self.lock:
            await self._send([event], record=True)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode())

    async def _send(self, events: list[dict[str, Any]], record: bool) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return
        for ev in events:
            text = orjson.dumps(ev).decode()
            if record:
                self.sent_frames.append(text)
            await ws.send_str(text)


class SimServer:
    """An in-process Realtime API stand-in. ``async with SimServer(SimConfig()) as sim: sim.url``."""

    def __init__(self, config: SimConfig | None = None, faults: Faults | None = None) -> None:
        self.config = config or SimConfig()
        self.faults = faults or Faults()
        self.connections: list[SimConnection] = []
        self.transcripts: deque[str] = deque(self.config.transcripts)
        self.app = web.Application()
        self.app.router.add_get(REALTIME_PATH, self.handle)
        self.app.router.add_get("/healthz", self._health)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._accepted = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> SimServer:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else self.config.port
        return self

    async def stop(self) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.close(1001, "server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/v1/realtime`` (add ``?model=...``)."""
        return f"ws://{self.config.host}:{self._port}{REALTIME_PATH}"

    @property
    def base_url(self) -> str:
        """The value for the SDK's ``websocket_base_url``: ``ws://host:port/v1``."""
        return f"ws://{self.config.host}:{self._port}/v1"

    # --- test helpers ---------------------------------------------------------------------------

    def script_transcripts(self, *texts: str) -> None:
        """Queue what the next committed user audio items "say" (first in, first used)."""
        self.transcripts.extend(texts)

    async def wait_for_connections(self, n: int = 1, within: float = 5.0) -> SimConnection:
        """Wait until ``n`` connections were accepted; returns the ``n``-th."""
        async with asyncio.timeout(within):
            while len(self.connections) < n:
                self._accepted.clear()
                await self._accepted.wait()
        return self.connections[n - 1]

    def _transcribe(self, duration_ms: int) -> str:
        if self.transcripts:
            text = self.transcripts.popleft()
            if self.config.cycle_transcripts:
                self.transcripts.append(text)
            return text
        return default_transcript(duration_ms)

    # --- handshake ------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "connections": sum(not c.closed.is_set() for c in self.connections)}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The ``GET /v1/realtime`` handler; mountable in another aiohttp app."""
        faults = self.faults
        if faults.handshake_delay:
            await asyncio.sleep(faults.handshake_delay)
        if faults.refuse_handshake is not None:
            body = faults.refuse_body or {
                "error": {
                    "message": "Simulated refusal.",
                    "type": "invalid_request_error" if faults.refuse_handshake < 500 else "server_error",
                    "param": None,
                    "code": "rate_limit_exceeded" if faults.refuse_handshake == 429 else None,
                }
            }
            return web.json_response(body, status=faults.refuse_handshake)
        key = presented_key(request)
        want = self.config.api_key
        if want is not None and key != want:
            if not key:
                return _http_error(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    None,
                )
            return _http_error(
                401,
                f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_api_key",
            )
        q = request.query
        model, call_id, intent = q.get("model"), q.get("call_id"), q.get("intent")
        if call_id and model:
            return _http_error(
                400, "Provide either 'model' or 'call_id', not both.", "invalid_value", "call_id"
            )
        kind = "realtime"
        if intent == "transcription" and not model and not call_id:
            kind = "transcription"
        elif intent is not None and intent != "transcription":
            return _http_error(400, f"Invalid value for 'intent': '{intent}'.", "invalid_value", "intent")
        elif not model and not call_id:
            return _http_error(
                400, "Missing required parameter: 'model'.", "missing_required_parameter", "model"
            )
        protocols = offered_protocols(request)
        beta = BETA_PROTOCOL in protocols or "realtime=v1" in request.headers.get("OpenAI-Beta", "").lower()
        ws = web.WebSocketResponse(
            protocols=("realtime",) if "realtime" in protocols else (),
            compress=False,
            max_msg_size=self.config.max_msg_size,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            return _http_error(426, "This endpoint only accepts WebSocket upgrades.", None)
        conn = SimConnection(
            path=request.path,
            query=dict(q),
            request_headers=CIMultiDict(request.headers),
            api_key=key,
            beta=beta,
            model=model or self.config.default_model,
        )
        await ws.prepare(request)
        conn.ws = ws
        conn.protocol = ws.ws_protocol
        self.connections.append(conn)
        self._accepted.set()
        try:
            await self._serve(conn, ws, kind)
        finally:
            conn.close_code = ws.close_code
            conn.closed.set()
            if not self.config.record_frames:
                # Long-running servers (CLI, embedded upstream) keep only live connections.
                self.connections.remove(conn)
        return ws

    # --- connection -----------------------------------------------------------------------------

    async def _serve(self, conn: SimConnection, ws: web.WebSocketResponse, kind: str) -> None:
        cfg = self.config
        session = SimSession(
            beta=conn.beta,
            model=conn.model,
            kind=kind,
            options=SessionOptions(
                voice_source=cfg.voice_source,
                delta_ms=cfg.delta_ms,
                fixed_reply=cfg.fixed_reply,
                tokens_per_minute=cfg.tokens_per_minute,
            ),
            transcribe=self._transcribe,
            max_session_seconds=cfg.max_session_seconds,
        )
        conn.session = session
        record = cfg.record_frames
        wake = asyncio.Event()
        async with conn.lock:
            await conn._send(session.open(), record)
            if self.faults.send_error:
                err = session.ev(
                    "error",
                    error={
                        "type": "server_error",
                        "code": self.faults.send_error,
                        "message": "Simulated server error.",
                        "param": None,
                        "event_id": None,
                    },
                )
                await conn._send([err], record)
        pump = asyncio.create_task(self._pump(conn, session, wake))
        expiry = asyncio.create_task(self._expire(conn, session, cfg.max_session_seconds))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        async with conn.lock:
                            await conn._send(
                                [session.error("invalid_json", "Binary frames are not supported.")], record
                            )
                    continue
                text: str = msg.data
                if record:
                    conn.received_frames.append(text)
                async with conn.lock:
                    await conn._send(session.handle(text), record)
                if session.active is not None:
                    wake.set()
        finally:
            pump.cancel()
            expiry.cancel()
            for t in (pump, expiry):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _pump(self, conn: SimConnection, session: SimSession, wake: asyncio.Event) -> None:
        """Stream the active response: one batch, then sleep for its share of audio time."""
        record = self.config.record_frames
        ws = conn.ws
        assert ws is not None
        while True:
            await wake.wait()
            wake.clear()
            run = None
            batches = 0
            while not ws.closed:
                faults = self.faults
                async with conn.lock:
                    if session.active is None:
                        break
                    if session.active is not run:
                        run, batches = session.active, 0
                    if faults.fail_responses:
                        events = run.fail(
                            "server_error", "The server had an error while processing your request."
                        )
                        audio_ms = 0.0
                    else:
                        step = session.step()
                        if step is None:
                            break
                        events, audio_ms = step
                    await conn._send(events, record)
                batches += 1
                if faults.close_mid_response is not None and batches >= faults.close_after_batches:
                    await conn.close(faults.close_mid_response, "simulated failure")
                    return
                if faults.stall_seconds and batches == 1:
                    await asyncio.sleep(faults.stall_seconds)
                delay = audio_ms / 1000 * self.config.pace * faults.slow_factor
                # Yield even without pacing so client events interleave with long responses.
                await asyncio.sleep(delay)

    async def _expire(self, conn: SimConnection, session: SimSession, seconds: float) -> None:
        await asyncio.sleep(seconds)
        async with conn.lock:
            await conn._send(session.expire(), self.config.record_frames)
        await conn.close(self.config.expiry_close_code, "session_expired")


async def start_embedded(
    host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, **kw: Any
) -> SimServer:
    """Start a simulator in the running loop (the relay's default upstream); ``await sim.stop()``.

    Frames are not recorded and closed connections are forgotten, so it can run for days.
    """
    kw.setdefault("record_frames", False)
    return await SimServer(SimConfig(host=host, port=port, api_key=api_key, **kw)).start()
