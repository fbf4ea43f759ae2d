"""The bench peers' wire layer: RFC 6455 framing on raw asyncio, and the latency stamp.

Rules:
- Only what a text-only, extension-free WebSocket needs: text frames, fragmented messages,
  ping (answered with pong), close (answered with close, then the transport closes). Frames may
  be split across reads and several may share one; lengths use the 7, 16 or 64-bit form.
- Client frames are masked (one random key per connection), server frames are not, and each side
  rejects the other form with close 1002. Masking uses ``websockets.speedups.apply_mask`` (C).
- Reading goes through ``asyncio.BufferedProtocol`` into one receive buffer per process: the
  plain ``Protocol`` path of Python 3.11 allocates a 256 KiB ``bytes`` per ``recv``, which glibc
  may serve with mmap/mremap/munmap every time (measured: 60 % of the bench upstream's CPU).
  Frames are parsed in place; only a trailing partial frame is copied into the connection's own
  buffer.
- Receiving parses only far enough to find the stamp, and only while the latencies record: a
  complete text frame costs a header decode and, when recording, one ``find`` and one ``int``
  (plus unmasking the payload's first ``STAMP_WINDOW`` bytes on the server side).
- Every frame leaves in one ``transport.write``. A connection whose peer stops reading keeps
  buffering up to ``WRITE_HIGH_WATER`` bytes; the senders skip (and count) frames beyond that, so a
  stalled relay shows as latency and skipped frames, never as unbounded memory.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable

from websockets.speedups import apply_mask as _c_apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STAMP = b'"event_id":"b'
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HEAD_LIMIT = 16384
"""Largest HTTP head (request or response) read during the handshake."""
WRITE_HIGH_WATER = 1 << 20
STAMP_WINDOW = 96
"""Masked payload bytes unmasked to look for the stamp before unmasking the whole frame."""

# The C function reads any buffer; its stub says bytes, and copying a slice to bytes to please it
# would cost a copy per received frame.
apply_mask: Callable[[bytes | bytearray, bytes | bytearray], bytes] = _c_apply_mask  # type: ignore[assignment]


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


def stamp_in(data: bytes | bytearray, start: int, end: int) -> int:
    """``stamp_of`` over ``data[start:end]`` (UTF-8 bytes), without copying the frame."""
    i = data.find(STAMP, start, end)
    if i < 0:
        return -1
    i += 13
    j = data.find(b'"', i, end)
    if j < 0:
        return -1
    try:
        return int(data[i:j])
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


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def header(opcode: int, length: int, mask: bytes = b"") -> bytes:
    """A final frame's header (FIN set), with the masking key appended when given."""
    m = 0x80 if mask else 0
    if length < 126:
        return bytes((0x80 | opcode, m | length)) + mask
    if length < 1 << 16:
        return bytes((0x80 | opcode, m | 126)) + length.to_bytes(2, "big") + mask
    return bytes((0x80 | opcode, m | 127)) + length.to_bytes(8, "big") + mask


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """An HTTP head's first line and its headers (lower-case names; repeats joined with ", ")."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return lines[0], headers


def has_token(value: str, token: str) -> bool:
    return token in (part.strip().lower() for part in value.split(","))


class TextFrame:
    """Pre-encoded text frame ``head + <decimal digits> + tail``; only the digits vary per frame.

    With a masking key the constant parts are masked once (per digit count: the digits shift the
    tail's alignment to the key), so a frame costs one small ``apply_mask`` and one join.
    """

    def __init__(self, head: bytes, tail: bytes, mask: bytes = b"") -> None:
        self.head, self.tail, self.mask = head, tail, mask
        self._digits = -1
        self._start = self._end = self._digit_key = b""

    def build(self, digits: bytes) -> bytes:
        if len(digits) != self._digits:
            self._prepare(len(digits))
        if self.mask:
            return b"".join((self._start, apply_mask(digits, self._digit_key), self._end))
        return b"".join((self._start, digits, self._end))

    def _prepare(self, digits: int) -> None:
        self._digits = digits
        size = len(self.head) + digits + len(self.tail)
        if not self.mask:
            self._start, self._end = header(OP_TEXT, size) + self.head, self.tail
            return
        self._start = header(OP_TEXT, size, self.mask) + apply_mask(self.head, self.mask)
        self._digit_key = _rotated(self.mask, len(self.head))
        self._end = apply_mask(self.tail, _rotated(self.mask, len(self.head) + digits))


def _rotated(mask: bytes, offset: int) -> bytes:
    """The key that masks a segment starting ``offset`` bytes into a masked payload."""
    k = offset % 4
    return mask[k:] + mask[:k]


_RECV = bytearray(1 << 18)
_RECV_VIEW = memoryview(_RECV)
"""The process's one receive buffer: the transport reads into it and calls ``buffer_updated`` at
once, and parsing finishes before control returns to the loop, so connections can share it."""


def _header_problem(b0: int, client: bool) -> str:
    if b0 & 0x70:
        return "reserved bits set (no extension was negotiated)"
    return "masked frame from the server" if client else "unmasked frame from the client"


def _unconnected(data: bytes) -> None:
    raise ConnectionError("not connected")


class FramedProtocol(asyncio.BufferedProtocol):
    """One WebSocket connection; subclasses do their side of the handshake in ``handshake`` and
    call ``upgraded_with`` once it succeeded; from then on every read goes to ``framed``.

    ``client``: this end is the client (sends masked, expects unmasked). ``errors`` collects one
    line per protocol failure, lost connection, or (with ``report_peer_close``) close the peer
    started. ``lost`` resolves when the transport is gone.
    """

    def __init__(self, latencies: Latencies, errors: list[str], client: bool) -> None:
        self.latencies = latencies
        self.errors = errors
        self.client = client
        self.mask = os.urandom(4) if client else b""
        self.transport: asyncio.Transport | None = None
        self.write: Callable[[bytes], None] = _unconnected
        """The transport's ``write`` (one lookup less per frame on the senders' hot loops)."""
        self.upgraded = False
        self.open = False
        """Upgraded and no close sent or received: frames may be sent."""
        self.paused = False
        self.report_peer_close = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._frag: bytearray | None = None
        self._frag_text = False
        self._close_sent = False
        self._close_received = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.write = transport.write
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.upgraded and not self._close_received and not self._close_sent:
            self.errors.append(f"connection lost: {exc!r}" if exc else "connection lost: EOF without close")
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def send(self, opcode: int, payload: bytes) -> None:
        if self.mask:
            self.write(header(opcode, len(payload), self.mask) + apply_mask(payload, self.mask))
        else:
            self.write(header(opcode, len(payload)) + payload)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (the transport closes when the peer answers)."""
        if self.transport is None or self.transport.is_closing() or self._close_sent:
            return
        self.open = False
        self._close_sent = True
        self.send(OP_CLOSE, code.to_bytes(2, "big"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self.upgraded:
            self.framed(nbytes)
        else:
            self.handshake(bytes(_RECV_VIEW[:nbytes]))

    def handshake(self, data: bytes) -> None:
        """Bytes received before the upgrade; the subclass calls ``upgraded_with`` once done."""
        raise NotImplementedError

    def upgraded_with(self, rest: bytes) -> None:
        """The handshake is done; ``rest`` is what followed the HTTP head (often frames)."""
        self.upgraded = self.open = True
        if rest:
            self._buf = bytearray(rest)
            self.framed(0)

    def framed(self, nbytes: int) -> None:
        """Parse the frames in what an earlier read left over plus ``_RECV[:nbytes]``.

        The common case (nothing left over) parses straight in the shared receive buffer and
        copies only a trailing partial frame out of it.
        """
        if self._buf:
            buf = self._buf
            buf += _RECV_VIEW[:nbytes]
            n = len(buf)
        else:
            buf, n = _RECV, nbytes
        pos = 0
        lat = self.latencies
        masked = not self.client
        expect = 0 if self.client else 0x80
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80 != expect or b0 & 0x70:
                self._buf = bytearray()
                self._fail(1002, _header_problem(b0, self.client))
                return
            size = b1 & 0x7F
            p = pos + 2
            if size == 126:
                if n - pos < 4:
                    break
                size = (buf[p] << 8) | buf[p + 1]
                p += 2
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(buf[p : p + 8], "big")
                p += 8
            if masked:
                p += 4
            end = p + size
            if end > n:
                break
            if b0 == 0x81:  # a complete text frame: the hot path
                if lat.recording:
                    lat.add(self._masked_stamp(buf, p, end) if masked else stamp_in(buf, p, end))
            else:
                payload = apply_mask(buf[p:end], buf[p - 4 : p]) if masked else bytes(buf[p:end])
                if not self._other(b0, payload):
                    self._buf = bytearray()
                    return
            pos = end
        if buf is _RECV:
            if pos < n:
                self._buf = bytearray(_RECV_VIEW[pos:n])
        else:
            del buf[:pos]

    @staticmethod
    def _masked_stamp(buf: bytearray, p: int, end: int) -> int:
        mask = buf[p - 4 : p]
        window = p + STAMP_WINDOW
        if window < end:
            head = apply_mask(buf[p:window], mask)
            i = head.find(STAMP)
            j = head.find(b'"', i + 13) if i >= 0 else -1
            if j >= 0:  # else the stamp is further in, or cut at the window's edge
                try:
                    return int(head[i + 13 : j])
                except ValueError:
                    return -1
        whole = apply_mask(buf[p:end], mask)
        return stamp_in(whole, 0, len(whole))

    def _other(self, b0: int, payload: bytes) -> bool:
        """Every frame but a complete text frame; False once the connection is closing."""
        fin, op = b0 & 0x80, b0 & 0x0F
        if op >= 0x8:
            if not fin or len(payload) > 125:
                return self._fail(1002, "bad control frame")
            if op == OP_PING:
                if self.open:
                    self.send(OP_PONG, payload)
            elif op == OP_CLOSE:
                return self._closed_by_peer(payload)
            elif op != OP_PONG:
                return self._fail(1002, f"reserved opcode {op}")
        elif op == OP_CONT:
            if self._frag is None:
                return self._fail(1002, "continuation without a message")
            self._frag += payload
            if fin:
                message, self._frag = self._frag, None
                if self._frag_text and self.latencies.recording:
                    self.latencies.add(stamp_in(message, 0, len(message)))
        elif op in (OP_TEXT, OP_BINARY):
            if self._frag is not None:
                return self._fail(1002, "new message inside a fragmented one")
            if not fin:
                self._frag, self._frag_text = bytearray(payload), op == OP_TEXT
        else:
            return self._fail(1002, f"reserved opcode {op}")
        return True

    def _closed_by_peer(self, payload: bytes) -> bool:
        self._close_received = True
        if self.report_peer_close and not self._close_sent:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            reason = payload[2:].decode("utf-8", "replace")
            self.errors.append(f"closed by the peer: {code} {reason}".rstrip())
        if not self._close_sent:
            self._close_sent = True
            self.send(OP_CLOSE, payload[:2] if len(payload) >= 2 else b"")
        self.open = False
        assert self.transport is not None
        self.transport.close()
        return False

    def _fail(self, code: int, reason: str) -> bool:
        self.errors.append(f"protocol error: {reason}")
        if self.open and not self._close_sent:
            self._close_sent = True
            self.send(OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:120])
        self.open = False
        if self.transport is not None:
            self.transport.close()
        return False
