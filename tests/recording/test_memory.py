"""A 60-minute session fed faster than real time keeps the recorder's memory flat.

Recorded into real S3 (SeaweedFS) with 5 MiB parts: about 345 MB of stereo PCM16 go through the
spool and out as parts while the "call" runs; traced Python memory after the first 10 minutes must
not grow with the session's length, and the spool holds a few parts at most.
"""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from relay.metrics import RelayMetrics
from relay.recording import Recorder
from relay.recording.spool import dir_bytes
from relay.recording.wav import parse_header, split
from tests.recording.conftest import s3_recording_config
from tests.recording.helpers import Call, session_info, settle
from tests.support.seaweed import SeaweedFS

MINUTES = 60
MiB = 1024 * 1024


async def test_sixty_minute_session_keeps_memory_flat(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, s3_admin: Any
) -> None:
    rec = await Recorder.create(
        s3_recording_config(tmp_path, seaweedfs, bucket), RelayMetrics(CollectorRegistry()), relay_version="t"
    )
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink, chunk_ms=100, keep=False)
    call.start()
    tracemalloc.start()
    baseline = 0
    peak_after = 0
    spool_peak = 0
    started = time.monotonic()
    try:
        for block in range(MINUTES * 12):  # 5-second blocks of conversation
            call.speak(4900)
            rid, _, _ = call.respond(1000)  # arrives in 0.1 s
            call.done(rid)
            await rec._process_all()  # noqa: SLF001 - the writer's work, faster than its tick
            if block % 4 == 3:
                await rec._sync()  # noqa: SLF001 - the fsync loop's work
            if block == 10 * 12:  # after 10 minutes: everything is warm
                await settle_parts(rec)
                baseline = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            if block > 10 * 12 and block % 60 == 0:
                await settle_parts(rec)
                peak_after = max(peak_after, tracemalloc.get_traced_memory()[0])
                spool_peak = max(spool_peak, dir_bytes(tmp_path / "spool"))
        await settle_parts(rec)
        end_current, end_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    sink.close(call.summary())
    await settle(rec, 120)
    await rec.aclose()
    assert call.t_us >= MINUTES * 60 * 1_000_000 and elapsed < MINUTES * 60 / 20  # >20x real time
    growth = max(peak_after, end_current) - baseline
    assert growth < 4 * MiB, f"traced memory grew by {growth / MiB:.1f} MiB between minute 10 and 60"
    assert end_peak - baseline < 32 * MiB, f"peak {(end_peak - baseline) / MiB:.1f} MiB above baseline"
    assert spool_peak < 6 * 5 * MiB, f"spool held {spool_peak / MiB:.1f} MiB"

    # The 345 MB recording is whole: left channel = every byte the caller sent.
    loc = f"calls/tenant=acme/date={time.strftime('%Y-%m-%d', time.gmtime(info.started_at))}/session={info.session_id}"
    manifest = orjson.loads(
        await (await s3_admin.get_object(Bucket=bucket, Key=f"{loc}/manifest.json"))["Body"].read()
    )
    assert manifest["complete"] is True and manifest["objects"]["audio.wav"]["size"] > 340_000_000
    r = await s3_admin.get_object(Bucket=bucket, Key=f"{loc}/audio.wav")
    left_hash = hashlib.sha256()
    whole = hashlib.sha256()
    remaining = call.sent_bytes
    async with r["Body"] as body:
        head = await body.read(44)
        whole.update(head)
        fmt = parse_header(head).fmt
        carry = b""
        while chunk := await body.read(4 * MiB):
            whole.update(chunk)
            chunk = carry + chunk
            cut = len(chunk) - len(chunk) % 4  # network reads are not frame-aligned
            chunk, carry = chunk[:cut], chunk[cut:]
            left = split(chunk, fmt)[0]
            take = left[:remaining]
            left_hash.update(take)
            remaining -= len(take)
    assert remaining == 0 and left_hash.digest() == call.sent_hash.digest()
    assert whole.hexdigest() == manifest["objects"]["audio.wav"]["sha256"]


async def settle_parts(rec: Recorder) -> None:
    """Wait until the uploader has taken every sealed part (what the real-time pace gives it)."""
    import asyncio

    for _ in range(400):
        if not any(u.ready_since for u, _ in rec._uploads.values()):  # noqa: SLF001
            return
        await asyncio.sleep(0.025)
