"""WebSocket framing (RFC 6455) for the relay's data path, without I/O.

Rules of this module:
- ``FrameReader`` turns the bytes one peer sent into whole messages; ``text_frame`` and friends
  turn a message into the bytes to write. Nothing here touches a socket or a clock, so the
  framing is tested with plain calls and the pumps stay small.
- The handshakes are not here: aiohttp answers the client's upgrade, ``relay.upstream`` opens the
  upstream. Once a connection is upgraded, every frame in both directions goes through here.
- No extension is ever negotiated (no permessage-deflate), so a frame with a reserved bit set is a
  protocol error, as is an unmasked frame from a client or a masked one from a server.
- Violations raise ``WireError`` carrying the close code to send (1002 protocol error, 1009 too
  big). Sizes are checked on the declared length, before anything is buffered, so a peer cannot
  make the relay hold more than ``max_size`` bytes of one message.
- The hot path is one complete unfragmented frame per read: it is parsed straight out of the
  receive buffer (a view the caller reuses), with one C call to unmask it; only payloads and an
  incomplete frame's bytes are copied out.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import cast

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension on every supported platform
    from websockets.utils import apply_mask as _apply_mask

apply_mask = cast(Callable[[bytes | memoryview, bytes | memoryview], bytes], _apply_mask)
"""XOR with the 4-byte key, in C; takes any buffer (its stub says ``bytes``)."""

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack
_PACK_16_MASKED = struct.Struct("!BBHI").pack
_PACK_64_MASKED = struct.Struct("!BBQI").pack
_PACK_7_MASKED = struct.Struct("!BBI").pack
_UNPACK_16 = struct.Struct("!H").unpack_from
_UNPACK_64 = struct.Struct("!Q").unpack_from
_UNPACK_CODE = struct.Struct("!H").unpack_from
_random_bits = random.getrandbits


class WireError(Exception):
    """A peer broke the framing rules; ``code`` is the close code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def valid_close_code(code: int) -> bool:
    """Close codes a peer may put on the wire (RFC 6455 §7.4, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a close frame's payload; ``(None, "")`` for an empty one."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise WireError(1002, "close frame with a one-byte payload")
    code = _UNPACK_CODE(payload)[0]
    if not valid_close_code(code):
        raise WireError(1002, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise WireError(1007, "close reason is not valid UTF-8") from None
    return code, reason


class FrameReader:
    """Reassembles the messages one peer sends.

    ``feed(data)`` returns the messages completed by ``data`` as ``(opcode, payload)`` pairs:
    data messages (text, binary) whole and unmasked, control frames (close, ping, pong) as they
    come, even between the fragments of a data message.
    """

    __slots__ = (
        "masked",
        "max_size",
        "_pending",
        "_pending_size",
        "_need",
        "_fragments",
        "_fragment_opcode",
        "_fragment_size",
    )

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self.masked = masked
        """Frames must be masked (a client's) or must not be (a server's)."""
        self.max_size = max_size
        self._pending: list[bytes | memoryview] = []
        """Received bytes of an incomplete frame; joined only once the whole frame is there."""
        self._pending_size = 0
        self._need = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_size = 0

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """Parse ``data``; it may be a view of a buffer that is reused once this returns."""
        buf: bytes | memoryview
        if self._pending:
            self._pending_size += len(data)
            if self._pending_size < self._need:
                self._pending.append(bytes(data))
                return []
            self._pending.append(data)
            buf = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        else:
            buf = data
        end = len(buf)
        pos = 0
        out: list[tuple[int, bytes]] = []
        need = 0
        want_mask = 0x80 if self.masked else 0
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if end - head < 2:
                    break
                length = _UNPACK_16(buf, head)[0]
                head += 2
            elif length == 127:
                if end - head < 8:
                    break
                length = _UNPACK_64(buf, head)[0]
                head += 8
            if b0 & 0x70:
                raise WireError(1002, "reserved bits set (no extension was negotiated)")
            if b1 & 0x80 != want_mask:
                raise WireError(
                    1002, "client frames must be masked" if want_mask else "server frames must not be masked"
                )
            opcode = b0 & 0x0F
            if opcode >= 0x8:
                if opcode not in _CONTROL_OPCODES:
                    raise WireError(1002, f"unknown opcode {opcode:#x}")
                if length > 125 or not b0 & 0x80:
                    raise WireError(1002, "control frames must be final and at most 125 bytes")
            elif length > self.max_size or self._fragment_size + length > self.max_size:
                raise WireError(1009, f"message larger than {self.max_size} bytes")
            stop = head + 4 + length if want_mask else head + length
            if stop > end:
                need = stop - pos
                break
            if want_mask:
                payload = apply_mask(buf[head + 4 : stop], buf[head : head + 4])
            else:
                payload = bytes(buf[head:stop])
            pos = stop
            if b0 & 0x80 and (opcode == OP_TEXT or opcode == OP_BINARY) and not self._fragments:
                out.append((opcode, payload))
            else:
                self._frame(b0 & 0x80, opcode, payload, out)
        if pos < end:
            rest = bytes(buf[pos:])
            self._pending = [rest]
            self._pending_size = len(rest)
            self._need = need
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode >= 0x8:
            out.append((opcode, payload))
            return
        if opcode == OP_CONTINUATION:
            if not self._fragments:
                raise WireError(1002, "continuation frame without a message to continue")
        elif opcode in _DATA_OPCODES:
            if self._fragments:
                raise WireError(1002, "new message before the previous one was finished")
            self._fragment_opcode = opcode
        else:
            raise WireError(1002, f"unknown opcode {opcode:#x}")
        self._fragments.append(payload)
        self._fragment_size += len(payload)
        if fin:
            out.append((self._fragment_opcode, b"".join(self._fragments)))
            self._fragments = []
            self._fragment_size = 0

    @property
    def buffered(self) -> int:
        """Bytes held for incomplete frames and fragments."""
        return self._pending_size + self._fragment_size


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame: what the relay sends to its clients."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _PACK_16(b0, 126, n) + payload
    return _PACK_64(b0, 127, n) + payload


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final frame masked with a fresh key: what the relay sends upstream."""
    n = len(payload)
    b0 = 0x80 | opcode
    key = _random_bits(32)
    if n < 126:
        head = _PACK_7_MASKED(b0, 0x80 | n, key)
    elif n < 65536:
        head = _PACK_16_MASKED(b0, 0xFE, n, key)
    else:
        head = _PACK_64_MASKED(b0, 0xFF, n, key)
    return head + apply_mask(payload, head[-4:])


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The payload of a close frame; the reason is cut to fit the 125-byte control frame limit."""
    if code is None:
        return b""
    data = reason.encode()[:123]
    while True:
        try:
            data.decode()
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return struct.pack("!H", code) + data


__all__ = [
    "FrameReader",
    "WireError",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "client_frame",
    "close_payload",
    "parse_close",
    "server_frame",
    "valid_close_code",
]
