"""WebSocket framing without sockets: what the pumps rely on ``relay.wire`` for."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from relay.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
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


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame built by the websockets library (an independent implementation)."""
    return Frame(Opcode(opcode), payload, fin=fin).serialize(mask=True)


def raw(first_byte: int, payload: bytes) -> bytes:
    """A masked frame with any first byte, valid or not (websockets refuses to build bad ones)."""
    assert len(payload) < 126
    key = os.urandom(4)
    return (
        bytes((first_byte, 0x80 | len(payload))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    )


def unmasked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(Opcode(opcode), payload, fin=fin).serialize(mask=False)


def parse_with_websockets(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    gen = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(gen)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding_round_trips_both_ways(size: int) -> None:
    payload = os.urandom(size)
    client = FrameReader(masked=True, max_size=1 << 20)
    assert client.feed(masked(OP_TEXT, payload)) == [(OP_TEXT, payload)]
    server = FrameReader(masked=False, max_size=1 << 20)
    assert server.feed(unmasked(OP_BINARY, payload)) == [(OP_BINARY, payload)]
    # what the relay writes parses in an independent implementation
    out = parse_with_websockets(client_frame(OP_TEXT, payload), mask=True)
    assert (out.opcode, out.data, out.fin) == (Opcode.TEXT, payload, True)
    out = parse_with_websockets(server_frame(OP_TEXT, payload), mask=False)
    assert (out.opcode, out.data, out.fin) == (Opcode.TEXT, payload, True)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=40),
    fragment=st.integers(min_value=1, max_value=4),
)
def test_any_split_of_the_stream_yields_the_same_messages(
    messages: list[bytes], cuts: list[int], fragment: int
) -> None:
    stream = b""
    for i, payload in enumerate(messages):
        # fragment every other message, with a ping between its fragments
        if i % 2 and len(payload) >= fragment:
            step = max(1, len(payload) // fragment)
            parts = [payload[k : k + step] for k in range(0, len(payload), step)]
            for j, part in enumerate(parts):
                opcode = OP_BINARY if j == 0 else OP_CONTINUATION
                stream += masked(opcode, part, fin=j == len(parts) - 1)
                if j == 0:
                    stream += masked(OP_PING, b"p")
        else:
            stream += masked(OP_BINARY, payload)
    reader = FrameReader(masked=True, max_size=1 << 20)
    got: list[tuple[int, bytes]] = []
    pos = 0
    for cut in cuts:
        got += reader.feed(stream[pos : pos + cut])
        pos += cut
    got += reader.feed(stream[pos:])
    assert [p for op, p in got if op == OP_BINARY] == messages
    assert all(p == b"p" for op, p in got if op == OP_PING)
    assert reader.buffered == 0


def test_a_large_frame_arriving_in_pieces_is_not_rejoined_per_piece() -> None:
    payload = os.urandom(2_000_000)
    frame = masked(OP_TEXT, payload)
    reader = FrameReader(masked=True, max_size=4_000_000)
    out: list[tuple[int, bytes]] = []
    for k in range(0, len(frame), 65536):
        out += reader.feed(frame[k : k + 65536])
        if k + 65536 < len(frame):
            assert len(reader._pending) == k // 65536 + 1  # noqa: SLF001 - pieces kept, not joined
    assert out == [(OP_TEXT, payload)]


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (unmasked(OP_TEXT, b"x"), 1002, "must be masked"),
        (raw(0x80 | 0x40 | OP_TEXT, b"x"), 1002, "reserved bits"),
        (masked(OP_CONTINUATION, b"x"), 1002, "continuation"),
        (raw(0x83, b"x"), 1002, "unknown opcode"),
        (raw(0x8B, b"x"), 1002, "unknown opcode"),
        (raw(OP_PING, b"x"), 1002, "control frames"),
        (masked(OP_TEXT, b"x" * 101), 1009, "larger than 100"),
        (masked(OP_TEXT, b"a", fin=False) + masked(OP_TEXT, b"b"), 1002, "before the previous"),
        (masked(OP_TEXT, b"a" * 60, fin=False) + masked(OP_CONTINUATION, b"b" * 60), 1009, "larger"),
    ],
)
def test_protocol_violations_name_the_close_code(data: bytes, code: int, words: str) -> None:
    reader = FrameReader(masked=True, max_size=100)
    with pytest.raises(WireError) as err:
        reader.feed(data)
    assert err.value.code == code and words in err.value.message


def test_a_too_big_declared_length_is_refused_before_the_payload_arrives() -> None:
    reader = FrameReader(masked=True, max_size=1000)
    header = struct.pack("!BBQ", 0x81, 0xFF, 10**12) + b"\0\0\0\0"
    with pytest.raises(WireError) as err:
        reader.feed(header)
    assert err.value.code == 1009


def test_server_frames_must_not_be_masked() -> None:
    with pytest.raises(WireError, match="must not be masked"):
        FrameReader(masked=False, max_size=100).feed(masked(OP_TEXT, b"x"))


def test_close_frames() -> None:
    assert parse_close(b"") == (None, "")
    assert parse_close(close_payload(1000, "bye")) == (1000, "bye")
    assert parse_close(close_payload(4000, "custom")) == (4000, "custom")
    for bad in (b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999), struct.pack("!H", 5000)):
        with pytest.raises(WireError):
            parse_close(bad)
    with pytest.raises(WireError) as err:
        parse_close(struct.pack("!H", 1000) + b"\xff")
    assert err.value.code == 1007
    # a long reason is cut to the control-frame limit without splitting a character
    long = close_payload(1001, "é" * 100)
    assert len(long) <= 125
    assert parse_close(long) == (1001, "é" * 61)
    frame = server_frame(OP_CLOSE, long)
    assert FrameReader(masked=False, max_size=10).feed(frame) == [(OP_CLOSE, long)]


def test_pong_and_ping_pass_through_in_order() -> None:
    reader = FrameReader(masked=False, max_size=100)
    data = unmasked(OP_PING, b"1") + unmasked(OP_TEXT, b"t") + unmasked(OP_PONG, b"2")
    assert reader.feed(data) == [(OP_PING, b"1"), (OP_TEXT, b"t"), (OP_PONG, b"2")]
