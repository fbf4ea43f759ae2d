"""A relay-like process that records one session and is then SIGKILLed by the test.

Usage: python -m tests.recording.crash_worker SPOOL BUCKET ENDPOINT SESSION_ID SECONDS
It records SECONDS of a conversation (fed faster than real time), makes the spool durable, prints
READY with the durable state, and sleeps until killed. Nothing is closed: the kill is the point.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from relay.config import RecordingConfig, S3Config
from relay.metrics import RelayMetrics
from relay.recording import Recorder
from tests.recording.helpers import Call, session_info


async def main(spool: str, bucket: str, endpoint: str, session_id: str, seconds: int) -> None:
    cfg = RecordingConfig(
        sink="s3",
        spool_dir=spool,
        fsync_interval=0.2,
        s3=S3Config(
            bucket=bucket, prefix="calls", endpoint_url=endpoint, addressing_style="path", part_size_mb=5
        ),
    )
    rec = await Recorder.create(cfg, RelayMetrics(CollectorRegistry()), relay_version="crash-test")
    sink = rec.open(session_info(session_id), None)
    call = Call(sink)
    call.start()
    for _ in range(seconds // 5):
        call.speak(4900)
        rid, item, _ = call.respond(1000)
        call.done(rid)
        await rec._process_all()  # noqa: SLF001 - feed faster than the writer's tick
    for _ in range(3):
        await rec._process_all()  # noqa: SLF001
        await rec._sync()  # noqa: SLF001
    for _ in range(100):  # let the uploader take what is ready (part 2 of the audio)
        await asyncio.sleep(0.1)
        if not any(u.ready_since for u, _ in rec._uploads.values()):  # noqa: SLF001
            break
    Path(spool).parent.joinpath("sent.bin").write_bytes(bytes(call.sent))
    print("READY", len(call.sent), flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
