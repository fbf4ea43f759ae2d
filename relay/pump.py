"""The event pumps of a session: the only place where a session's frames meet sockets.

Rules of this module:
- Once both handshakes are done, the pumps take both transports over (``Transport.set_protocol``)
  and relay in the transports' own callbacks: a read is parsed (``relay.wire``), each message
  goes to the sans-I/O ``Session``, and the returned actions are carried out in order, all in
  the same call. No task wakes up per frame; frames produced by one read for one peer leave in
  one write; every read lands in one process-wide receive buffer (no allocation per read).
- Backpressure is TCP's: when a peer's write buffer passes its high-water mark, the side whose
  frames fill it stops being read until it drains. Nothing here queues frames without bound: a
  read is at most one socket buffer, and what it produces is all that can be in flight.
- ``Call(hold=True)`` stops reading its direction until the call's actions are carried out (a
  budget reservation before a response may start); frames already read wait in order.
  ``Call(hold=False)`` runs in a task this module owns.
- The first side to end the session wins: close codes and reasons propagate from the side that
  closed to the other, and both closing handshakes run with a deadline.
- Reserved close codes (1005, 1006, 1015) never go on the wire: an abnormal upstream drop reaches
  the client as an ``error`` event and 1011; an abnormal client drop reaches upstream as 1000.
- An exception in the session core ends the session: both sides are closed, then it propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.actions import Action, Call, Close, Send
from relay.events import C2U, U2C, error_event
from relay.session import Session
from relay.upstream import UpstreamLink
from relay.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    WireError,
    client_frame,
    close_payload,
    parse_close,
    server_frame,
)

_UNSENDABLE = (1005, 1006, 1015)
_NORMAL_CLOSE = (None, 1000, 1001, 1005)
"""Client close codes that end a session normally (outcome ``ok``); others are ``client_closed``."""
CLOSE_TIMEOUT = 5.0
"""Seconds a peer gets to answer the relay's close frame and to take the last bytes."""


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


_RECEIVE = memoryview(bytearray(256 * 1024))
"""The process's one receive buffer. Every read is parsed to the end before the loop reads again
(frames are copied out, an incomplete one is kept by its reader), so all connections share it:
a plain ``Protocol`` would allocate a fresh 256 KiB ``bytes`` per read instead."""


class _Peer(asyncio.BufferedProtocol):
    """One side's connection while the session runs: hands every callback to the pumps."""

    def __init__(
        self,
        pumps: Pumps,
        name: str,
        transport: asyncio.Transport,
        reader: FrameReader,
        inherited: asyncio.BaseProtocol | None,
    ) -> None:
        self.pumps = pumps
        self.name = name
        """``client`` or ``upstream``."""
        self.transport = transport
        self.reader = reader
        self.frame = server_frame if name == "client" else client_frame
        self.inherited = inherited
        """The protocol the transport had before (aiohttp's); told when the connection is lost."""
        self.lane = _Lane(self)
        """The frames read from this peer, and what they produced."""
        self.out: list[bytes] = []
        self.write_paused = False
        self.read_paused = False
        self.close_sent = False
        self.close_received = False
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVE

    def buffer_updated(self, nbytes: int) -> None:
        self.pumps._received(self, _RECEIVE[:nbytes])

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        self.pumps._lost(self)
        if self.inherited is not None:
            self.inherited.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pumps._backpressure()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.pumps._backpressure()

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


class _Lane:
    """The frames read from one side, and the actions they produced, carried out in order."""

    __slots__ = ("source", "backlog", "deferred", "busy", "blocked")

    def __init__(self, source: _Peer | None) -> None:
        self.source = source
        self.backlog: deque[tuple[int, bytes]] = deque()
        """Messages read while a held call was in flight."""
        self.deferred: list[Sequence[Action]] = []
        """Actions that come after a held call, innermost first."""
        self.busy = False
        self.blocked = False
        """A peer this lane writes to is over its write buffer's high-water mark."""


class Pumps:
    def __init__(
        self, session: Session, client: asyncio.Transport, upstream: UpstreamLink, *, client_max_size: int
    ) -> None:
        self.session = session
        self.client = _Peer(
            self, "client", client, FrameReader(masked=True, max_size=client_max_size), client.get_protocol()
        )
        self.upstream = _Peer(
            self,
            "upstream",
            upstream.transport,
            FrameReader(masked=False, max_size=upstream.max_msg_size),
            None,
        )
        self._tail = upstream.tail
        self._relay_lane = _Lane(None)
        self._background: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[PumpResult] = asyncio.get_running_loop().create_future()
        self._final_error: dict[str, Any] | None = None
        self._last_text = ""
        self._last_bytes = b""

    # -- public ------------------------------------------------------------------------------

    async def run(self, initial: Sequence[Action] = ()) -> PumpResult:
        """Relay until one side closes, an action ends the session, or ``shutdown`` is called."""
        self.client.transport.set_protocol(self.client)
        self.upstream.transport.set_protocol(self.upstream)
        try:
            self._execute(self._relay_lane, initial)
            tail, self._tail = self._tail, b""
            if tail:
                self._received(self.upstream, tail)
        except _End as end:
            self._end(end.result)
        finally:
            self._flush()
        # The handshake left the upstream paused; read it even if the session already ended,
        # for its closing handshake.
        self.upstream.transport.resume_reading()
        try:
            result = await self._done
        except BaseException:
            for task in list(self._background):
                task.cancel()
            await self._close_both(PumpResult("relay", "internal_error", 1011, "relay error", 1000, ""))
            raise
        for task in list(self._background):
            task.cancel()
        if self._final_error is not None:
            self._write(self.client, orjson.dumps(self._final_error))
        await self._close_both(result)
        return result

    def shutdown(
        self, code: int, reason: str, outcome: str = "shutdown", error: dict[str, Any] | None = None
    ) -> None:
        """End the session from outside (drain timeout, maximum length, relay stopping).

        ``error``: an ``error`` event payload sent to the client before the close.
        """
        if not self._done.done():
            self._final_error = error
            self._done.set_result(PumpResult("shutdown", outcome, code, reason, 1000, reason))

    # -- transport callbacks -----------------------------------------------------------------

    def _received(self, peer: _Peer, data: bytes | memoryview) -> None:
        if self._done.done():
            self._closing_read(peer, data)
            return
        try:
            try:
                messages = peer.reader.feed(data)
            except WireError as exc:
                self._wire_error(peer, exc)
                return
            lane = peer.lane
            if lane.busy:
                lane.backlog.extend(messages)
            else:
                self._process(lane, messages)
        except _End as end:
            self._end(end.result)
        except Exception as exc:  # noqa: BLE001 - the session core failed: end the session with it
            self._fail(exc)
        self._flush()

    def _lost(self, peer: _Peer) -> None:
        if self._done.done():
            return
        if peer is self.client:
            self._end(PumpResult("client", "client_dropped", 1006, "", 1000, "client connection lost"))
        else:
            self._upstream_gone("The upstream connection dropped without a close frame.", 1006, "")

    def _backpressure(self) -> None:
        client_full = self.client.write_paused
        upstream_full = self.upstream.write_paused
        # A side is read only while what its frames produce can be written: upstream frames go to
        # the client; client frames go upstream, and their error replies back to the client.
        for lane, blocked in (
            (self.upstream.lane, client_full),
            (self.client.lane, upstream_full or client_full),
        ):
            lane.blocked = blocked
            self._update_reading(lane)

    # -- processing --------------------------------------------------------------------------

    def _process(self, lane: _Lane, messages: Sequence[tuple[int, bytes]] | deque[tuple[int, bytes]]) -> None:
        source = lane.source
        assert source is not None
        session = self.session
        clock = time.monotonic_ns
        from_client = source is self.client
        for i, (opcode, payload) in enumerate(messages):
            if lane.busy:
                lane.backlog.extend(list(messages)[i:])
                return
            if opcode == OP_TEXT:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._wire_error(source, WireError(1007, "text frame is not valid UTF-8"))
                    raise _End(self._done.result()) from None
                self._last_text = text
                self._last_bytes = payload
                if from_client:
                    self._execute(lane, session.client_text(text, clock()))
                else:
                    self._execute(lane, session.upstream_text(text, clock()))
            elif opcode == OP_BINARY:
                if from_client:
                    self._execute(lane, session.client_binary(len(payload)))
                # upstream binary frames are not part of the protocol; never forwarded
            elif opcode == OP_PING:
                self._write(source, payload, OP_PONG)
            elif opcode == OP_CLOSE:
                self._close_received(source, payload)
            # OP_PONG: nothing to do (the relay sends no pings of its own)

    def _execute(self, lane: _Lane, actions: Sequence[Action]) -> None:
        session = self.session
        for i, action in enumerate(actions):
            cls = action.__class__
            if cls is Send:
                send: Send = action  # type: ignore[assignment]
                text = send.text
                data = self._last_bytes if text is self._last_text else text.encode()
                self._write(self.upstream if send.to is C2U else self.client, data)
                follow = session.sent(send, time.monotonic_ns())
                if follow:
                    self._execute(lane, follow)
                    if lane.busy:
                        rest = actions[i + 1 :]
                        if rest:
                            lane.deferred.append(rest)
                        return
            elif cls is Call:
                call: Call = action  # type: ignore[assignment]
                if not call.hold:
                    self._spawn(self._background_call(call))
                    continue
                rest = actions[i + 1 :]
                if rest:
                    lane.deferred.append(rest)
                lane.busy = True
                self._update_reading(lane)
                self._spawn(self._held_call(lane, call))
                return
            elif cls is Close:
                close: Close = action  # type: ignore[assignment]
                raise _End(PumpResult("relay", close.outcome, close.code, close.reason, 1000, close.reason))

    async def _held_call(self, lane: _Lane, call: Call) -> None:
        try:
            result = await call.thunk()
            if self._done.done():
                return
            todo = [result, *lane.deferred]
            lane.deferred = []
            lane.busy = False
            for k, actions in enumerate(todo):
                self._execute(lane, actions)
                if lane.busy:
                    lane.deferred.extend(todo[k + 1 :])
                    return
            if lane.backlog:
                backlog, lane.backlog = lane.backlog, deque()
                self._process(lane, backlog)
            self._update_reading(lane)
        except _End as end:
            self._end(end.result)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self._flush()

    async def _background_call(self, call: Call) -> None:
        try:
            actions = await call.thunk()
            if not self._done.done():
                self._execute(self._relay_lane, actions)
        except _End as end:
            self._end(end.result)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self._flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _update_reading(self, lane: _Lane) -> None:
        source = lane.source
        if source is None:
            return
        paused = lane.busy or lane.blocked
        if paused != source.read_paused and not source.transport.is_closing():
            source.read_paused = paused
            if paused:
                source.transport.pause_reading()
            else:
                source.transport.resume_reading()

    # -- ends --------------------------------------------------------------------------------

    def _close_received(self, peer: _Peer, payload: bytes) -> None:
        peer.close_received = True
        code, reason = parse_close(payload)
        if peer is self.client:
            up_code = 1000 if code is None else code
            outcome = "ok" if code in _NORMAL_CLOSE else "client_closed"
            raise _End(PumpResult("client", outcome, code, reason, up_code, reason))
        if code is None:
            self._upstream_gone("The upstream closed the connection without a close code.", 1005, reason)
            raise _End(self._done.result())
        raise _End(PumpResult("upstream", "upstream_closed", code, reason, code, reason))

    def _wire_error(self, peer: _Peer, exc: WireError) -> None:
        """A peer broke the framing: close it with the matching code and end the session."""
        if self._done.done():
            return
        if not peer.close_sent:
            self._write(peer, close_payload(exc.code, exc.message), OP_CLOSE)
            peer.close_sent = True
        if peer is self.client:
            self._end(
                PumpResult("client", "client_error", exc.code, exc.message, 1000, "client protocol error")
            )
        else:
            self._upstream_gone(
                f"The upstream broke the WebSocket protocol: {exc.message}.", exc.code, exc.message
            )

    def _upstream_gone(self, message: str, code: int, reason: str) -> None:
        self._send_client_error("upstream_disconnected", message)
        self._end(PumpResult("upstream", "upstream_dropped", 1011, "upstream connection lost", code, reason))

    def _send_client_error(self, code: str, message: str) -> None:
        if self.client.close_sent or self.client.transport.is_closing():
            return
        text = orjson.dumps(error_event(code, message, error_type="server_error")).decode()
        self._write(self.client, text.encode())
        self.session.sent(Send(U2C, text, None), time.monotonic_ns())

    def _end(self, result: PumpResult) -> None:
        if not self._done.done():
            self._done.set_result(result)

    def _fail(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)

    def _closing_read(self, peer: _Peer, data: bytes | memoryview) -> None:
        """After the session ended, a peer's frames matter only for its closing handshake."""
        try:
            messages = peer.reader.feed(data)
        except WireError:
            peer.transport.abort()
            return
        for opcode, _ in messages:
            if opcode == OP_CLOSE:
                peer.close_received = True
                if peer.close_sent:
                    peer.transport.close()

    async def _close_both(self, result: PumpResult) -> None:
        client_code = result.client_code if result.client_code not in (None, *_UNSENDABLE) else 1011
        upstream_code = result.upstream_code if result.upstream_code not in (None, *_UNSENDABLE) else 1000
        # Upstream first: a closing client learns the session is over only after the upstream did.
        await asyncio.gather(
            self._close(self.upstream, upstream_code, result.upstream_reason),
            self._close(self.client, client_code, result.client_reason),
        )

    async def _close(self, peer: _Peer, code: int, reason: str) -> None:
        transport = peer.transport
        if not peer.gone.done() and not transport.is_closing():
            if not peer.close_sent:
                self._write(peer, close_payload(code, reason), OP_CLOSE)
                peer.close_sent = True
                peer.flush()
            if peer.read_paused:
                peer.read_paused = False
                transport.resume_reading()
            if peer.close_received:
                transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(peer.gone), CLOSE_TIMEOUT)
            return
        if not transport.is_closing():
            transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(peer.gone), 1.0)
            return
        transport.abort()
        await peer.gone

    # -- writing -----------------------------------------------------------------------------

    def _write(self, peer: _Peer, payload: bytes, opcode: int = OP_TEXT) -> None:
        if peer.close_sent or peer.gone.done():
            if self._done.done() or opcode != OP_TEXT:
                return
            raise _End(
                PumpResult(peer.name, f"{peer.name}_dropped", 1011, f"{peer.name} connection lost", 1000, "")
            )
        peer.out.append(peer.frame(opcode, payload))

    def _flush(self) -> None:
        for peer in (self.upstream, self.client):
            if peer.out and not peer.gone.done():
                peer.flush()
            else:
                peer.out.clear()
