"""Building realistic Realtime event sequences and feeding them to a recording sink.

A ``Call`` drives one sink on a simulated clock (µs since the session start): the caller streams
20 ms PCM16 chunks in real time, the model's audio arrives in 100 ms deltas ten times faster than
real time, and interruptions follow the protocol (speech_started, response.done cancelled,
conversation.item.truncate).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import itertools
import os
import time
from pathlib import Path
from typing import Any

import orjson

from relay.contracts import SessionInfo, SessionSummary
from relay.events import Dialect, Event, parse_client_frame, parse_upstream_frame
from relay.recording import Recorder

_ids = itertools.count(1)


def session_info(
    session_id: str | None = None, tenant: str = "acme", dialect: Dialect = Dialect.GA
) -> SessionInfo:
    return SessionInfo(
        session_id=session_id or f"sess_{os.urandom(6).hex()}",
        tenant=tenant,
        key_id="acme-test",
        model="gpt-realtime",
        dialect=dialect,
        client_addr="127.0.0.1",
        user_agent="AsyncOpenAI/Python 3.54.0",
        started_at=time.time(),
        started_ns=time.monotonic_ns(),
        policy_version="v1-test",
    )


def client(payload: dict[str, Any]) -> Event:
    return parse_client_frame(orjson.dumps(payload).decode(), next(_ids), 0)


def upstream(payload: dict[str, Any]) -> Event:
    return parse_upstream_frame(orjson.dumps(payload).decode(), next(_ids), 0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def noise(n: int) -> bytes:
    """Random bytes, so every chunk is distinguishable from silence and from the others."""
    return os.urandom(n)


class Call:
    """Feeds one sink. ``t_us`` is the session clock; every event is timestamped with it.

    The caller's microphone streams 20 ms chunks continuously in real time (as a real client
    does), interleaved with whatever else happens; ``mic = False`` models a client that pauses.
    """

    def __init__(
        self, sink: Any, *, beta: bool = False, fmt: str = "pcm16", chunk_ms: int = 20, keep: bool = True
    ) -> None:
        self.sink = sink
        self.t_us = 0
        self.beta = beta
        self.fmt = fmt
        self.sent = bytearray()
        """Every caller byte sent (unless ``keep`` is False: then only ``sent_hash``/``sent_bytes``)."""
        self.keep = keep
        self.sent_hash = hashlib.sha256()
        self.sent_bytes = 0
        self.bytes_per_ms = 48 if fmt == "pcm16" else 8
        self.chunk_ms = chunk_ms
        self.mic = True
        self._next_chunk_us = chunk_ms * 1000
        self.responses = 0

    def up(self, payload: dict[str, Any]) -> None:
        self.sink.record_event(upstream(payload), self.t_us)

    def down(self, payload: dict[str, Any]) -> None:
        self.sink.record_event(client(payload), self.t_us)

    def start(self) -> None:
        if self.beta:
            names = {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}
            session = {"input_audio_format": names[self.fmt], "output_audio_format": names[self.fmt]}
            self.down({"type": "session.update", "session": session})
            self.up({"type": "session.created", "event_id": "e0", "session": {"id": "s1", **session}})
        else:
            f = {"type": "audio/pcm", "rate": 24000} if self.fmt == "pcm16" else {"type": f"audio/{self.fmt}"}
            session = {"type": "realtime", "audio": {"input": {"format": f}, "output": {"format": f}}}
            self.down({"type": "session.update", "session": session})
            self.up({"type": "session.updated", "event_id": "e0", "session": session})

    def advance(self, to_us: int) -> None:
        """Move the clock, streaming the microphone's chunks that fall due on the way."""
        while self._next_chunk_us <= to_us:
            self.t_us = self._next_chunk_us
            if self.mic:
                chunk = noise(self.chunk_ms * self.bytes_per_ms)
                self.down({"type": "input_audio_buffer.append", "audio": b64(chunk)})
                self._sent(chunk)
            self._next_chunk_us += self.chunk_ms * 1000
        self.t_us = max(self.t_us, to_us)

    def speak(self, ms: int) -> None:
        self.advance(self.t_us + ms * 1000)

    def wait(self, ms: int) -> None:
        self.advance(self.t_us + ms * 1000)

    def respond(
        self, ms: int, *, delta_ms: int = 100, speedup: int = 10, transcript: str = "Hello there."
    ) -> tuple[str, str, bytes]:
        """A model response with ``ms`` of audio; returns (response id, item id, audio)."""
        self.responses += 1
        rid, item = f"resp_{self.responses}", f"item_{self.responses}"
        delta_type = "response.audio.delta" if self.beta else "response.output_audio.delta"
        tr_done = "response.audio_transcript.done" if self.beta else "response.output_audio_transcript.done"
        self.up(
            {"type": "response.created", "event_id": "e", "response": {"id": rid, "status": "in_progress"}}
        )
        audio = noise(ms * self.bytes_per_ms)
        step = delta_ms * self.bytes_per_ms
        for i in range(0, len(audio), step):
            chunk = audio[i : i + step]
            self.up(
                {
                    "type": delta_type,
                    "event_id": "e",
                    "response_id": rid,
                    "item_id": item,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": b64(chunk),
                }
            )
            self.advance(self.t_us + len(chunk) * 1000 // self.bytes_per_ms // speedup)
        self.up(
            {"type": tr_done, "event_id": "e", "response_id": rid, "item_id": item, "transcript": transcript}
        )
        return rid, item, audio

    def done(self, rid: str, status: str = "completed") -> None:
        self.up(
            {
                "type": "response.done",
                "event_id": "e",
                "response": {"id": rid, "status": status, "usage": {"total_tokens": 10}},
            }
        )

    def truncate(self, item: str, audio_end_ms: int) -> None:
        self.down(
            {
                "type": "conversation.item.truncate",
                "item_id": item,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    def client_audio(self, data: bytes) -> None:
        """One append of ``data`` right now (outside the microphone's rhythm)."""
        self.down({"type": "input_audio_buffer.append", "audio": b64(data)})
        self._sent(data)

    def _sent(self, chunk: bytes) -> None:
        self.sent_hash.update(chunk)
        self.sent_bytes += len(chunk)
        if self.keep:
            self.sent += chunk

    def summary(self, **kw: Any) -> SessionSummary:
        base: dict[str, Any] = {
            "ended_at": time.time(),
            "duration_s": self.t_us / 1e6,
            "client_close_code": 1000,
            "client_close_reason": "",
            "upstream_close_code": 1000,
            "upstream_close_reason": "",
            "outcome": "ok",
            "events_client_to_upstream": 0,
            "events_upstream_to_client": 0,
            "usage": {"audio_seconds": {"input": 1.0}, "tokens": {"total": 10}, "usd": 0.001},
        }
        base.update(kw)
        return SessionSummary(**base)


async def settle(recorder: Recorder, within: float = 30.0) -> None:
    """Wait until every upload of ``recorder`` finished (manifests written)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not recorder._live and not recorder._uploads:  # noqa: SLF001 - test synchronisation
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"recordings still uploading after {within}s: {list(recorder._uploads)}")


def event_lines(folder: Path) -> list[dict[str, Any]]:
    """The parsed lines of a recording folder's ``events.jsonl.gz``."""
    return [orjson.loads(x) for x in gzip.decompress((folder / "events.jsonl.gz").read_bytes()).splitlines()]


def read_local(root: Path, session_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], bytes, Path]:
    """(manifest, event lines, audio.wav bytes, folder) of a session in a local sink."""
    folder = next(root.rglob(f"session={session_id}"))
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    return manifest, event_lines(folder), (folder / "audio.wav").read_bytes(), folder
