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
import time
from dataclasses import dataclass

import aiohttp

from relay.config import UpstreamConfig
from relay.errors import UpstreamError
from relay.events import Dialect


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


class UpstreamConnector:
    """Owns the process-wide aiohttp client session used for every upstream socket."""

    def __init__(self, target: UpstreamTarget, *, max_msg_size: int) -> None:
        self.target = target
        self.max_msg_size = max_msg_size
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        self._http = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def connect(
        self, query_string: str, dialect: Dialect
    ) -> tuple[aiohttp.ClientWebSocketResponse, float]:
        """Open the upstream socket; returns it with the time the handshake took (seconds).

        Raises:
            UpstreamError: with the HTTP status to answer the client with.
        """
        assert self._http is not None, "UpstreamConnector.start() was not called"
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
            ws = await asyncio.wait_for(
                self._http.ws_connect(
                    url,
                    headers=headers,
                    compress=0,
                    autoclose=False,
                    autoping=True,
                    max_msg_size=self.max_msg_size,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                ),
                timeout=t.connect_timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _handshake_error(exc) from None
        except TimeoutError:
            raise UpstreamError(
                504, f"The upstream did not answer within {t.connect_timeout:g} s.", code="upstream_timeout"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                502, f"The upstream cannot be reached ({type(exc).__name__}).", code="upstream_unavailable"
            ) from None
        return ws, time.perf_counter() - started


def _handshake_error(exc: aiohttp.WSServerHandshakeError) -> UpstreamError:
    status = exc.status
    if status == 429:
        retry = exc.headers.get("Retry-After") if exc.headers else None
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
