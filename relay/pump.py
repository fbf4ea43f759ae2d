"""The two event pumps of a session: the only place where a session's frames meet sockets.

Rules of this module:
- One task per direction reads a frame, hands it to the sans-I/O ``Session`` and carries out the
  returned actions in order. Sending is awaited in the pump that produced the frame, so a peer
  that stops reading stalls only the direction that feeds it: the relay then stops reading the
  other side and TCP pushes back. Nothing here queues frames without bound.
- ``Call(hold=True)`` is awaited before the pump reads its next frame (a budget reservation
  before a response may start); ``Call(hold=False)`` runs in a task this module owns.
- The first pump to finish ends the session: the other is cancelled, both sides are closed, and
  close codes and reasons propagate from the side that closed to the other.
- Reserved close codes (1005, 1006, 1015) never go on the wire: an abnormal upstream drop reaches
  the client as an ``error`` event and 1011; an abnormal client drop reaches upstream as 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from relay.actions import Action, Call, Close, Send
from relay.events import C2U, U2C, error_event
from relay.session import Session

_CLOSING = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
_UNSENDABLE = (1005, 1006, 1015)
_NORMAL_CLOSE = (None, 1000, 1001, 1005)
"""Client close codes that end a session normally (outcome ``ok``); others are ``client_closed``."""


@dataclass(slots=True)
class PumpResult:
    closed_by: str
    """``client``, ``upstream``, ``relay`` (a Close action), or ``shutdown``."""
    outcome: str
    client_code: int | None
    client_reason: str
    upstream_code: int | None
    upstream_reason: str


class _End(Exception):
    def __init__(self, result: PumpResult) -> None:
        super().__init__(result.outcome)
        self.result = result


class Pumps:
    def __init__(
        self,
        session: Session,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
    ) -> None:
        self.session = session
        self.client = client
        self.upstream = upstream
        self._background: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Future[PumpResult] = asyncio.get_running_loop().create_future()
        self._final_error: dict[str, Any] | None = None

    # -- public ------------------------------------------------------------------------------

    async def run(self, initial: Sequence[Action] = ()) -> PumpResult:
        """Relay until one side closes, an action ends the session, or ``shutdown`` is called."""
        try:
            await self._execute(initial)
        except _End as end:
            await self._close_both(end.result)
            return end.result
        c2u = asyncio.create_task(self._pump_client(), name=f"c2u:{self.session.info.session_id}")
        u2c = asyncio.create_task(self._pump_upstream(), name=f"u2c:{self.session.info.session_id}")
        waiters: set[asyncio.Future[PumpResult]] = {c2u, u2c, self._stop}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            for t in (c2u, u2c):
                t.cancel()
            raise
        for t in (c2u, u2c):
            if not t.done():
                t.cancel()
        await asyncio.gather(c2u, u2c, return_exceptions=True)
        finished = next(iter(done))
        if finished is self._stop:
            result = self._stop.result()
            if self._final_error is not None:
                text = orjson.dumps(self._final_error).decode()
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.client.send_str(text)
        else:
            exc = finished.exception()
            if isinstance(exc, _End):
                result = exc.result
            elif exc is not None:
                raise exc
            else:
                result = finished.result()
        for task in list(self._background):
            task.cancel()
        await self._close_both(result)
        return result

    def shutdown(
        self, code: int, reason: str, outcome: str = "shutdown", error: dict[str, Any] | None = None
    ) -> None:
        """End the session from outside (drain timeout, maximum length, relay stopping).

        ``error``: an ``error`` event payload sent to the client before the close.
        """
        if not self._stop.done():
            self._final_error = error
            self._stop.set_result(PumpResult("shutdown", outcome, code, reason, 1000, reason))

    # -- pumps -------------------------------------------------------------------------------

    async def _pump_client(self) -> PumpResult:
        ws = self.client
        session = self.session
        clock = time.monotonic_ns
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                actions = session.client_text(msg.data, clock())
            elif kind is WSMsgType.BINARY:
                actions = session.client_binary(len(msg.data))
            elif kind in _CLOSING:
                code = ws.close_code
                reason = _reason(msg.extra)
                up_code = 1000 if code is None or code in _UNSENDABLE else code
                outcome = "ok" if code in _NORMAL_CLOSE else "client_closed"
                return PumpResult("client", outcome, code, reason, up_code, reason)
            elif kind is WSMsgType.ERROR:
                return PumpResult(
                    "client", "client_error", 1006, str(msg.data), 1000, "client connection lost"
                )
            else:
                continue
            await self._execute(actions)

    async def _pump_upstream(self) -> PumpResult:
        ws = self.upstream
        session = self.session
        clock = time.monotonic_ns
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                await self._execute(session.upstream_text(msg.data, clock()))
            elif kind in _CLOSING:
                code = ws.close_code if kind is not WSMsgType.CLOSE else msg.data
                reason = _reason(msg.extra)
                if code is None or code in _UNSENDABLE:
                    await self._send_client_error(
                        "upstream_disconnected", "The upstream connection dropped without a close frame."
                    )
                    return PumpResult(
                        "upstream", "upstream_dropped", 1011, "upstream connection lost", code, reason
                    )
                return PumpResult("upstream", "upstream_closed", code, reason, code, reason)
            elif kind is WSMsgType.ERROR:
                await self._send_client_error("upstream_disconnected", "The upstream connection failed.")
                return PumpResult("upstream", "upstream_dropped", 1011, "upstream connection lost", 1006, "")
            elif kind is WSMsgType.BINARY:
                continue  # not part of the protocol; never forwarded to a client
            else:
                continue

    # -- actions -----------------------------------------------------------------------------

    async def _execute(self, actions: Sequence[Action]) -> None:
        session = self.session
        for action in actions:
            if action.__class__ is Send:
                send: Send = action
                target = self.upstream if send.to is C2U else self.client
                try:
                    await target.send_str(send.text)
                except ConnectionError:
                    side = "upstream" if send.to is C2U else "client"
                    raise _End(
                        PumpResult(side, f"{side}_dropped", 1011, f"{side} connection lost", 1000, "")
                    ) from None
                follow = session.sent(send, time.monotonic_ns())
                if follow:
                    await self._execute(follow)
            elif isinstance(action, Close):
                raise _End(
                    PumpResult("relay", action.outcome, action.code, action.reason, 1000, action.reason)
                )
            elif isinstance(action, Call):
                if action.hold:
                    await self._execute(await action.thunk())
                else:
                    task = asyncio.create_task(self._run_call(action))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    async def _run_call(self, call: Call) -> None:
        try:
            await self._execute(await call.thunk())
        except _End as end:
            if not self._stop.done():
                self._stop.set_result(end.result)

    async def _send_client_error(self, code: str, message: str) -> None:
        text = orjson.dumps(error_event(code, message, error_type="server_error")).decode()
        send = Send(U2C, text, None)
        try:
            await self.client.send_str(text)
        except (ConnectionError, RuntimeError):
            return
        self.session.sent(send, time.monotonic_ns())

    async def _close_both(self, result: PumpResult) -> None:
        client_code = result.client_code if result.client_code not in (None, *_UNSENDABLE) else 1011
        upstream_code = result.upstream_code if result.upstream_code not in (None, *_UNSENDABLE) else 1000
        await asyncio.gather(
            _close(self.client, client_code, result.client_reason),
            _close(self.upstream, upstream_code, result.upstream_reason),
            return_exceptions=True,
        )


async def _close(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, code: int, reason: str) -> None:
    if ws.closed:
        return
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:123]), timeout=5.0)
    except (TimeoutError, ConnectionError, RuntimeError):
        pass


def _reason(extra: object) -> str:
    return extra if isinstance(extra, str) else ""
