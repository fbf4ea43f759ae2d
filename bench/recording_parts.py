"""What each part of a recorded event's work costs, measured side by side in one process.

Run: ``.venv/bin/python -m bench.recording_parts [--sessions 300] [--seconds 12]``.

``bench.recording_cost`` and ``bench.load`` measure the recorder whole, and on a shared VM their
figures move by 10-20 % from one run to the next, more than most single changes are worth. This
bench holds the machine constant instead: one process replays a voice call's traffic
(``bench.recording_cost.Call``: 50 client appends, 10 output deltas and 5 transcript deltas a
second, client appends with event ids as clients send them) into real sinks and spools, in rounds
of 100 ms of session time as the recorder's writer loop does (each session's queue drained, each
session flushed in its slot of the sync interval). Half of the sessions are the control; the other
half run with one part of the work switched off. The two halves alternate within every round, so
whatever the machine does meanwhile falls on both, and ``1 - variant / control`` is that part's
share of the recorder's time. ``none`` switches nothing off: its share shows the bench's noise.

Parts (switched off for the variant half only, while it runs):
- ``decode``: base64 decoding of audio payloads (zeros of the right length instead);
- ``sha256``: the per-chunk SHA-256 and the chain's SHA-256 of every line (fixed digests);
- ``deflate``: compressing the log's members (an empty member is written instead);
- ``audio-writes``: writing the audio to the spool files (the gathered chunks are dropped).

Not measured here: forwarding, ``record_event`` on the forwarding path, the writer loop's slicing,
syncs and uploads (``bench.recording_cost`` has them). Replayed events are built ahead of each
round, so their memory is as cold as the relay's by the time the writer reaches them.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from unittest.mock import patch

from bench.recording_cost import Call, _b64_pool
from relay.contracts import SessionInfo
from relay.events import Dialect, Event
from relay.recording import eventlog, spool, writer
from relay.recording.retention import DEFAULT_POLICY
from relay.recording.sink import SessionRecording
from relay.recording.spool import SessionSpool

ROUND_US = 100_000
ROUNDS_PER_FLUSH = 10
WARMUP_ROUNDS = 20
APPEND_HEAD = '{"type":"input_audio_buffer.append",'


class _Counter:
    def inc(self) -> None:
        return None


class _Digest:
    __slots__ = ()

    def digest(self) -> bytes:
        return bytes(32)

    def update(self, data: bytes) -> None:
        return None


class _NoDeflate:
    @staticmethod
    def compress(data: bytes, level: int = 1, wbits: int = 31) -> bytes:
        return b""


def _zeros_like(value: str, altchars: Any = None, validate: bool = False) -> bytes:
    return bytes(len(value) * 3 // 4 - value.endswith("=") - value.endswith("=="))


def _drop_audio(self: SessionSpool, channel: int) -> None:
    self._chunks[channel].clear()
    self._size[channel] = 0


PARTS: dict[str, Callable[[], AbstractContextManager[Any]]] = {
    "none": nullcontext,
    "decode": lambda: patch.object(writer, "b64decode", _zeros_like),
    "sha256": lambda: patch.object(eventlog, "_sha256", lambda data=b"": _Digest()),
    "deflate": lambda: patch.object(spool, "isal_zlib", _NoDeflate),
    "audio-writes": lambda: patch.object(SessionSpool, "flush_channel", _drop_audio),
}


class _EventIds(Call):
    """``Call`` with an event id in every client append, as the SDKs and browsers send them."""

    appended = 0

    def _client(self, text: str, now_ns: int) -> Event:
        if text.startswith(APPEND_HEAD):
            _EventIds.appended += 1
            text = f'{APPEND_HEAD}"event_id":"event_{_EventIds.appended:021d}",{text[len(APPEND_HEAD) :]}'
        return super()._client(text, now_ns)


def measure(part: str, sessions: int, seconds: float, tmp: Path) -> dict[str, Any]:
    """Replay ``seconds`` of traffic into ``sessions`` sinks; odd ones run without ``part``."""
    pools = {"client": _b64_pool(64, 960), "delta": _b64_pool(16, 4800)}
    t0 = time.monotonic_ns()
    clock = [0]
    calls: list[Call] = []
    for i in range(sessions):
        info = SessionInfo(
            f"rs_parts_{i:05d}",
            "bench",
            "bench",
            "gpt-realtime",
            Dialect.GA,
            started_at=time.time(),
            started_ns=t0,
        )
        sink = SessionRecording(
            info,
            DEFAULT_POLICY,
            SessionSpool(tmp / part / info.session_id, 5 * 1024 * 1024),
            queue_size=8192,
            on_overflow="terminate",
            dropped_counter=_Counter(),
            relay_version="bench",
        )
        sink.now_us = lambda: clock[0]  # type: ignore[method-assign]  # the replay's clock
        call: Call = _EventIds(i, sink, info, pools)
        for ev in call.start(t0):
            sink.record_event(ev, 0)
        calls.append(call)
    groups = (calls[0::2], calls[1::2])
    busy, events = [0, 0], [0, 0]
    out: list[Event] = []
    gc.collect()
    gc.freeze()
    for r in range(int(seconds * 1_000_000 / ROUND_US)):
        t_us = (r + 1) * ROUND_US
        clock[0] = t_us
        for g, group in enumerate(groups):
            for call in group:
                out.clear()
                call.due(t_us, t0, out)
                for ev in out:
                    call.sink.record_event(ev, t_us - ROUND_US // 2)
                if r >= WARMUP_ROUNDS:
                    events[g] += len(out)
        for g in (0, 1) if r % 2 else (1, 0):
            started = time.thread_time_ns()
            with PARTS[part]() if g else nullcontext():
                for k, call in enumerate(groups[g]):
                    sink = call.sink
                    while sink.process(32):
                        pass
                    if k % ROUNDS_PER_FLUSH == r % ROUNDS_PER_FLUSH:
                        sink.flush()
            if r >= WARMUP_ROUNDS:
                busy[g] += time.thread_time_ns() - started
    gc.unfreeze()
    control, variant = busy[0] / events[0] / 1000, busy[1] / events[1] / 1000
    return {
        "part": part,
        "control_us_per_event": round(control, 2),
        "without_us_per_event": round(variant, 2),
        "share": round(1 - variant / control, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from: " + ", ".join(PARTS))
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts: {', '.join(unknown)}")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="relay-rec-parts-"))
    try:
        for part in parts:
            row = measure(part, args.sessions, args.seconds, tmp)
            print(row, flush=True)
            rows.append(row)
            shutil.rmtree(tmp / part, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "\n| part switched off | control (µs/event) | without it (µs/event) | share of the recorder's time |"
    )
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['part']} | {row['control_us_per_event']} | {row['without_us_per_event']} "
            f"| {100 * row['share']:.0f} % |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
