"""The relay's own WebSocket framing over real sockets, driven by an independent client (websockets).

Fragmented messages are reassembled and forwarded as one frame, pings are answered, and protocol
violations close the client with the matching code while the upstream gets a normal close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import websockets
from websockets.frames import Frame, Opcode

from relay.sim import SimServer
from relay.upstream import UpstreamTarget
from tests.support.relay import RunningRelay, running_relay


async def connect(relay: RunningRelay) -> websockets.ClientConnection:
    ws = await websockets.connect(
        f"{relay.url}?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {relay.key}"},
        compression=None,
        max_size=None,
    )
    first = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert first["type"] == "session.created"
    return ws


async def read_upgrade(reader: asyncio.StreamReader) -> bytes:
    """Read a client's upgrade request; the ``Sec-WebSocket-Accept`` value that answers it."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def switching(accept: bytes, tail: bytes = b"") -> bytes:
    """A 101 answering an upgrade, and whatever the upstream sends in the same write."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + tail
    )


@contextlib.asynccontextmanager
async def raw_upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[UpstreamTarget]:
    """A hand-written upstream on loopback, as the relay's target."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield UpstreamTarget(f"ws://127.0.0.1:{port}/v1/realtime", "sk-relay-key", 5.0)
    finally:
        server.close()
        await server.wait_closed()


async def seconds_until_closed(relay: RunningRelay) -> tuple[float, int | None]:
    """Connect through the relay and read until it closes: (seconds after the upgrade, code)."""
    ws = await websockets.connect(
        f"{relay.url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {relay.key}"}
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return loop.time() - started, ws.close_code


async def test_a_fragmented_message_is_forwarded_whole(relay: RunningRelay, sim: SimServer) -> None:
    text = orjson.dumps({"type": "x.relay.fragmented", "event_id": "e1", "pad": "é" * 3000}).decode()
    ws = await connect(relay)
    try:
        # three fragments, the second cutting a two-byte character in half
        data = text.encode()
        await ws.send([data[:10], data[10:3001], data[3001:]], text=True)
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "error"  # the simulator's answer to an unknown type: it got the event
    finally:
        await ws.close()
    assert sim.connections[-1].received_frames == [text]


async def test_pings_are_answered_and_big_frames_pass(relay: RunningRelay, sim: SimServer) -> None:
    ws = await connect(relay)
    try:
        latency = await asyncio.wait_for(await ws.ping(b"are you there"), 5)
        assert latency >= 0
        silence = "A" * 400_000  # > 64 KiB: the 64-bit length form, several reads
        frame = orjson.dumps({"type": "input_audio_buffer.append", "audio": silence}).decode()
        await ws.send(frame)
        await ws.send('{"type":"x.relay.marker"}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "error"
    finally:
        await ws.close()
    assert sim.connections[-1].received_frames[-2:] == [frame, '{"type":"x.relay.marker"}']


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(Opcode.TEXT, b"\xff\xfe not utf-8"), 1007),
        (Frame(Opcode.CONT, b"no message to continue"), 1002),
        (Frame(Opcode.TEXT, b'{"type":"x"}', rsv1=True), 1002),
    ],
)
async def test_protocol_violations_close_the_client_with_the_code(
    relay: RunningRelay, sim: SimServer, frame: Frame, code: int
) -> None:
    ws = await connect(relay)
    # bypass the library's own checks: write the raw bytes of the bad frame
    header = bytearray(Frame(frame.opcode, frame.data, fin=frame.fin).serialize(mask=True))
    if frame.rsv1:
        header[0] |= 0x40
    ws.transport.write(bytes(header))
    with pytest.raises(websockets.ConnectionClosedError):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == code
    conn = sim.connections[-1]
    await asyncio.wait_for(conn.closed.wait(), 5)
    assert conn.close_code == 1000


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
    ids=["wrong-accept", "unoffered-extension", "not-http"],
)
async def test_an_upstream_answering_the_upgrade_badly_is_502(tmp_path: Path, answer: bytes) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accept = await read_upgrade(reader)
        writer.write(answer.replace(b"{accept}", accept))
        await writer.drain()
        await reader.read()  # until the relay drops the connection
        writer.close()

    async with raw_upstream(upstream) as target, running_relay(tmp_path, upstream=target) as r:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(
                f"{r.url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {r.key}"}
            )
        assert refused.value.response.status_code == 502
        assert orjson.loads(refused.value.response.body)["error"]["code"] == "upstream_unavailable"


async def test_an_upstream_closing_in_its_handshake_reply_gets_its_close_answered(tmp_path: Path) -> None:
    """The close arrives in the same read as the 101 (the handshake's tail), so the session ends
    before the pumps read anything: the relay answers it and closes the client at once."""
    replies: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accept = await read_upgrade(reader)
        close = Frame(Opcode.CLOSE, (1008).to_bytes(2, "big") + b"policy").serialize(mask=False)
        writer.write(switching(accept, close))
        await writer.drain()
        replies.append(await asyncio.wait_for(reader.read(64), 10))  # the relay's close
        writer.close()

    async with raw_upstream(upstream) as target, running_relay(tmp_path, upstream=target) as r:
        seconds, code = await seconds_until_closed(r)
    # Well inside the 5 s the relay gives a peer to answer its close: nothing waited for it.
    assert seconds < 2.5 and code is not None
    assert replies and replies[0][:1] == b"\x88"  # a close frame (masked, as a client's must be)


async def test_an_upstream_breaking_the_protocol_in_its_handshake_reply_is_closed_promptly(
    tmp_path: Path,
) -> None:
    """A masked frame (servers must not mask) arrives with the 101: the session ends before the
    pumps read anything, and the relay still reads the upstream's answer to its close."""
    replies: list[bytes] = []
    hung_up: list[float] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accept = await read_upgrade(reader)
        masked = Frame(Opcode.TEXT, b'{"type":"session.created"}').serialize(mask=True)
        writer.write(switching(accept, masked))
        await writer.drain()
        replies.append(await asyncio.wait_for(reader.read(64), 10))  # the relay's close
        writer.write(Frame(Opcode.CLOSE, (1000).to_bytes(2, "big")).serialize(mask=False))
        await writer.drain()
        answered = asyncio.get_running_loop().time()
        await reader.read()  # until the relay hangs up: at once, having read the answer
        hung_up.append(asyncio.get_running_loop().time() - answered)
        writer.close()

    async with raw_upstream(upstream) as target, running_relay(tmp_path, upstream=target) as r:
        seconds, code = await seconds_until_closed(r)
    # Well inside the 5 s the relay gives the upstream to answer its close.
    assert seconds < 2.5 and code == 1011
    assert replies and replies[0][:1] == b"\x88"
    # Not the 5 s the relay waits for an answer it cannot read (the upstream stays paused).
    assert hung_up and hung_up[0] < 2.5
