"""Opening the upstream WebSocket, and turning its failures into answers the client can act on.

Rules of this module:
- The relay's own key replaces the client's. Client credentials (headers or the
  ``openai-insecure-api-key.*`` subprotocol) never travel upstream, and the relay's key never
  appears in an exception message, a log line or a reply.
- The client's query string goes upstream unchanged (model, call_id, intent and anything else).
- No compression upstream: audio is base64 and does not compress; deflate costs CPU and memory.
- Handshake failures map to statuses the client can act on: 429 stays 429 (with Retry-After),
  a refused relay key or an unreachable upstream is 502, a slow one 504, other 4xx pass through.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from relay import __version__
from relay.config import UpstreamConfig
from relay.errors import UpstreamError
from relay.events import Dialect

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 64 * 1024
"""Largest upstream HTTP response head the relay reads before giving up on the handshake."""


@dataclass(slots=True)
class UpstreamTarget:
    url: str
    api_key: str
    connect_timeout: float = 10.0
    organization: str = ""
    project: str = ""

    @classmethod
    def from_config(cls, cfg: UpstreamConfig) -> UpstreamTarget:
        return cls(cfg.url, cfg.api_key, cfg.connect_timeout, cfg.organization, cfg.project)


@dataclass(slots=True)
class UpstreamLink:
    """An upgraded upstream connection, handed to the pumps.

    ``tail``: bytes the upstream sent right behind its 101 (often the first frames); reading stays
    paused until the pumps take the transport over and feed ``tail`` to their frame reader.
    """

    transport: asyncio.Transport
    tail: bytes
    max_msg_size: int

    def abort(self) -> None:
        """Drop the connection (the session never started)."""
        self.transport.abort()


class HandshakeFailed(Exception):
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


class _Handshake(asyncio.Protocol):
    """Reads the upstream's answer to the upgrade request, then pauses the transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._data = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._data += data
        if self.answer.done():
            return
        if b"\r\n\r\n" in self._data:
            assert self.transport is not None
            self.transport.pause_reading()
            self.answer.set_result(bytes(self._data))
        elif len(self._data) > _MAX_HEAD:
            self.answer.set_exception(ConnectionError("the upstream's response head is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("the upstream closed during the handshake"))


class UpstreamConnector:
    """Opens upstream WebSockets: TCP (+ TLS) and the HTTP upgrade, done here on asyncio.

    The relay speaks the upgrade itself rather than through an HTTP client library because the
    connection then belongs to the pumps from its first byte (``relay.pump`` drives the
    transport directly; ``relay.wire`` frames it).
    """

    def __init__(self, target: UpstreamTarget, *, max_msg_size: int) -> None:
        self.target = target
        self.max_msg_size = max_msg_size
        self._tls: ssl.SSLContext | None = None

    async def start(self) -> None:
        if urlsplit(self.target.url).scheme in ("wss", "https"):
            self._tls = ssl.create_default_context()

    async def aclose(self) -> None:
        return None

    async def connect(self, query_string: str, dialect: Dialect) -> tuple[UpstreamLink, float]:
        """Open the upstream socket; returns it with the time the handshake took (seconds).

        Raises:
            UpstreamError: with the HTTP status to answer the client with.
        """
        t = self.target
        url = t.url if not query_string else f"{t.url}{'&' if '?' in t.url else '?'}{query_string}"
        headers = {"Authorization": f"Bearer {t.api_key}"}
        if dialect is Dialect.BETA:
            headers["OpenAI-Beta"] = "realtime=v1"
        if t.organization:
            headers["OpenAI-Organization"] = t.organization
        if t.project:
            headers["OpenAI-Project"] = t.project
        started = time.perf_counter()
        try:
            link = await asyncio.wait_for(self._open(url, headers), timeout=t.connect_timeout)
        except HandshakeFailed as exc:
            raise _handshake_error(exc.status, exc.headers) from None
        except TimeoutError:
            raise UpstreamError(
                504, f"The upstream did not answer within {t.connect_timeout:g} s.", code="upstream_timeout"
            ) from None
        except (OSError, ValueError) as exc:
            raise UpstreamError(
                502, f"The upstream cannot be reached ({type(exc).__name__}).", code="upstream_unavailable"
            ) from None
        return link, time.perf_counter() - started

    async def _open(self, url: str, extra: dict[str, str]) -> UpstreamLink:
        parts = urlsplit(url)
        secure = parts.scheme in ("wss", "https")
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            raise ValueError("unsupported upstream URL")
        host = parts.hostname
        port = parts.port or (443 if secure else 80)
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_connection(
            _Handshake,
            host,
            port,
            ssl=self._tls if secure else None,
            server_hostname=host if secure else None,
        )
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            netloc = host if ":" not in host else f"[{host}]"
            if parts.port and parts.port != (443 if secure else 80):
                netloc = f"{netloc}:{parts.port}"
            lines = [
                f"GET {target} HTTP/1.1",
                f"Host: {netloc}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
                f"User-Agent: realtime-relay/{__version__}",
                *(f"{name}: {value}" for name, value in extra.items()),
            ]
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            answer = await proto.answer
            head, _, tail = answer.partition(b"\r\n\r\n")
            status, headers = _parse_head(head)
            if status != 101:
                raise HandshakeFailed(status, headers)
            expected = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
            if (
                headers.get("upgrade", "").lower() != "websocket"
                or "upgrade" not in headers.get("connection", "").lower()
                or headers.get("sec-websocket-accept") != expected
            ):
                raise ConnectionError("the upstream answered the upgrade with a bad handshake")
            if headers.get("sec-websocket-extensions"):
                raise ConnectionError("the upstream negotiated an extension the relay did not offer")
        except BaseException:
            transport.abort()
            raise
        return UpstreamLink(transport, tail, self.max_msg_size)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    try:
        text = head.decode("latin-1")
        status_line, *header_lines = text.split("\r\n")
        version, code, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        status = int(code)
    except ValueError:
        raise ConnectionError("the upstream did not answer with HTTP/1.1") from None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def _handshake_error(status: int, headers: dict[str, str]) -> UpstreamError:
    if status == 429:
        retry = headers.get("retry-after")
        return UpstreamError(
            429,
            "The upstream is rate limiting this relay; retry later.",
            code="rate_limit_exceeded",
            retry_after=retry,
        )
    if status in (401, 403):
        return UpstreamError(
            502, "The upstream refused the relay's credentials.", code="upstream_auth_failed"
        )
    if 400 <= status < 500:
        return UpstreamError(
            status, f"The upstream refused the session (HTTP {status}).", code="upstream_refused"
        )
    return UpstreamError(
        502, f"The upstream failed the handshake (HTTP {status}).", code="upstream_unavailable"
    )
