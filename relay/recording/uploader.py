"""Moves one session's spool to the sink: audio parts as the call runs, then the rest, then the manifest.

Rules of this module:
- Only durable data is uploaded: the recorder's sync loop hands over ``durable_*`` marks captured
  before each ``syncfs``, so nothing in S3 can be missing from a spool that survived a power cut.
- ``audio.wav`` is one multipart upload: part ``k+1`` = spool segment ``k`` of both channels
  interleaved, uploaded once sealed; part 1 = the WAV header + segment 0, uploaded last, when the
  length is known. A recording of one part or less is a single ``put``. Segments are deleted once
  their part is stored; the upload id and ETags are journaled in ``state.json``, so a restarted
  relay resumes the same upload instead of starting over.
- ``events.jsonl.gz`` is uploaded the same way from byte ranges of the log; ``manifest.json`` last.
- Failures back off exponentially (0.5 s to 30 s) and retry forever: the data is safe in the
  spool, and ``relay_recording_upload_failures_total`` / ``relay_recording_upload_lag_seconds``
  tell the operator. A multipart upload is aborted and restarted only when every byte it held is
  still in the spool; a lost upload whose data was already deleted makes the recording incomplete
  (``upload_lost``) instead of looping.
- The whole-object SHA-256 of ``audio.wav`` is computed by reading the stored object back (the
  header is only known at the end, after most parts left the spool); this also checks the upload.
- Memory: a part is built (segments read, channels interleaved) in a ``PartScratch`` that is
  reused from part to part: at most ``UPLOAD_CONCURRENCY`` of them exist, each about twice the
  part size, allocated once. Fresh buffers for every part would cost a page fault per 4 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from relay.metrics import RelayMetrics
from relay.recording import layout
from relay.recording import manifest as mf
from relay.recording.audioformat import AudioFormat
from relay.recording.spool import EVENTS, SessionSpool
from relay.recording.store import ObjectStore, PutOptions, StoreError
from relay.recording.timeline import LEFT, RIGHT
from relay.recording.wav import frame_bytes, header, interleave_into

log = logging.getLogger("relay.recording")

_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 30.0


class PartScratch:
    """Memory for building one part, reused from part to part (never resized once made)."""

    __slots__ = ("size", "left", "right", "out")

    def __init__(self, part_size: int) -> None:
        self.size = part_size // 2
        """A segment of one channel: at most half a part."""
        self.left = bytearray()  # allocated by the first build, in the worker thread
        self.right = bytearray()
        self.out = bytearray()
        """The last full-size part (no header): the next one of that size is built in place."""


@dataclass(slots=True)
class UploadContext:
    store: ObjectStore
    metrics: RelayMetrics
    part_size: int
    parts: asyncio.Semaphore
    """Bounds concurrent part builds + uploads process-wide (memory: one ``PartScratch`` each)."""
    sse: str = ""
    kms_key_id: str = ""
    storage_class: str = ""
    scratch: list[PartScratch] = field(default_factory=list)

    @contextlib.contextmanager
    def scratch_space(self) -> Iterator[PartScratch]:
        """A ``PartScratch`` to build and upload one part in (hold ``parts`` while using it)."""
        scratch = self.scratch.pop() if self.scratch else PartScratch(self.part_size)
        try:
            yield scratch
        finally:
            self.scratch.append(scratch)


def build_part(spool: SessionSpool, scratch: PartScratch, seg: int, frames: int, head: bytes) -> bytearray:
    """``head`` + segment ``seg`` of both channels interleaved (blocking: run in a worker thread).

    A full-size part without header is built in ``scratch.out`` (reused); others get their own
    buffer. The result stays valid until the scratch is used for the next part.
    """
    assert spool.fmt is not None
    sb = spool.fmt.sample_bytes
    if len(scratch.left) < frames * sb:
        scratch.left = bytearray(max(scratch.size, frames * sb))
        scratch.right = bytearray(len(scratch.left))
    n = spool.read_segment_into(LEFT, seg, frames, scratch.left)
    spool.read_segment_into(RIGHT, seg, frames, scratch.right)
    size = len(head) + 2 * n
    reusable = not head and frames == spool.frames_per_segment
    out = scratch.out if reusable and len(scratch.out) == size else bytearray(size)
    if reusable:
        scratch.out = out
    out[: len(head)] = head
    interleave_into(out, len(head), scratch.left, scratch.right, n, sb)
    return out


class SessionUpload:
    def __init__(self, ctx: UploadContext, spool: SessionSpool, state: dict[str, Any]) -> None:
        self.ctx = ctx
        self.spool = spool
        self.state = state
        loc = state["location"]
        self.loc = layout.SessionLocation(loc["prefix"], loc["tenant"], loc["date"], loc["session_id"])
        self.durable_frames = 0
        self.durable_events = 0
        self.durable_closed = False
        self.ready_since: float | None = None
        self.done = False
        self._wake = asyncio.Event()

    # Hand-over from the writer ------------------------------------------------------------------

    def mark_durable(self, frames: int, events_size: int, closed: bool) -> None:
        self.durable_frames = max(self.durable_frames, frames)
        self.durable_events = max(self.durable_events, events_size)
        self.durable_closed = self.durable_closed or closed
        if self._has_work():  # an idle uploader stays asleep: hundreds of sessions mark every second
            if self.ready_since is None:
                self.ready_since = time.time()
            self._wake.set()

    def _has_work(self) -> bool:
        n = self.state.get("frames_per_part") or 0
        a, e = self.state["audio"], self.state["events"]
        return (
            self.durable_closed
            or (n > 0 and (a["next_segment"] + 1) * n <= self.durable_frames)
            or e["uploaded"] + self.ctx.part_size <= self.durable_events
        )

    # Loop ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = _BACKOFF_MIN
        failing = False
        while not self.done:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._step()
                backoff = _BACKOFF_MIN
                if failing:
                    log.info("recording upload recovered", extra={"session_id": self.loc.session_id})
                failing = False
            except (StoreError, OSError) as exc:
                op = exc.op if isinstance(exc, StoreError) else "spool_read"
                self.ctx.metrics.recording_upload_failures_total.labels(op=op).inc()
                if not failing:
                    log.warning(
                        "recording upload failed, will retry: %s",
                        exc,
                        extra={"session_id": self.loc.session_id},
                    )
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                self._wake.set()
            if not self.done:
                self.ready_since = (self.ready_since or time.time()) if self._has_work() else None

    def _save(self) -> None:
        self.spool.save_state(self.state)

    def _opts(self, content_type: str) -> PutOptions:
        s, ctx = self.state, self.ctx
        until = s.get("retain_until")
        policy = s.get("policy") or {}
        return PutOptions(
            content_type=content_type,
            sse=ctx.sse,
            kms_key_id=ctx.kms_key_id,
            storage_class=policy.get("storage_class") or ctx.storage_class,
            lock_mode=policy.get("lock_mode", "") if until else "",
            retain_until=mf_datetime(until),
        )

    async def _step(self) -> None:
        await self._audio_parts()
        await self._events_parts(final=False)
        if self.durable_closed:
            await self._finalize()

    # Audio --------------------------------------------------------------------------------------

    @property
    def _fmt(self) -> AudioFormat:
        f = self.state.get("format")
        return AudioFormat(f["encoding"], f["rate"]) if f else AudioFormat("pcm16", 24000)

    async def _audio_parts(self, total: int | None = None) -> None:
        """Upload every sealed full part (or, with ``total``, every part up to the end)."""
        a = self.state["audio"]
        n = self.state.get("frames_per_part") or 0
        if n <= 0:
            return
        limit = total if total is not None else self.durable_frames
        key = self.loc.key(layout.AUDIO)
        while True:
            seg = a["next_segment"]
            frames = min(n, limit - seg * n) if total is not None else (n if (seg + 1) * n <= limit else 0)
            if frames <= 0:
                return
            if a["upload_id"] is None:
                a["upload_id"] = await self.ctx.store.create_multipart(key, self._opts("audio/wav"))
                self._save()
            async with self.ctx.parts:
                with self.ctx.scratch_space() as scratch:
                    data = await self._build(scratch, seg, frames)
                    size = len(data)
                    etag = await self._upload_part(key, a, seg + 1, data)
            a["parts"].append([seg + 1, etag])
            a["next_segment"] = seg + 1
            self._save()
            await self._delete_segment(seg)
            self.ctx.metrics.recording_uploaded_bytes_total.inc(size)

    async def _build(self, scratch: PartScratch, seg: int, frames: int, head: bytes = b"") -> bytearray:
        fmt = self._fmt
        if self.spool.fmt != fmt:
            self.spool.set_format(fmt)
        return await asyncio.to_thread(build_part, self.spool, scratch, seg, frames, head)

    async def _delete_segment(self, seg: int) -> None:
        self.spool.close_segment(seg)
        await asyncio.to_thread(self.spool.unlink_segment, seg)

    async def _upload_part(self, key: str, up: dict[str, Any], number: int, data: bytes | bytearray) -> str:
        try:
            return await self.ctx.store.upload_part(key, up["upload_id"], number, data)
        except StoreError as exc:
            if exc.code == "NoSuchUpload":
                self._lost_upload(key, up)
            raise

    def _lost_upload(self, key: str, up: dict[str, Any]) -> None:
        """The sink forgot a multipart upload: restart it if the spool still has every byte."""
        if up is self.state["audio"] and up["parts"]:
            up["lost"] = True
        up["upload_id"] = None
        up["parts"] = []
        up.pop("part1", None)
        if up is self.state["events"]:
            up["uploaded"] = 0
        self._save()
        log.warning("multipart upload of %s vanished from the sink", key)

    async def _finish_audio(self, total: int) -> dict[str, Any] | None:
        a = self.state["audio"]
        if a.get("done") is not None or a.get("lost"):
            done: dict[str, Any] | None = a.get("done")
            return done
        fmt = self._fmt
        n = self.state["frames_per_part"]
        key = self.loc.key(layout.AUDIO)
        head = header(fmt, total)
        if a["upload_id"] is None and total <= n:
            async with self.ctx.parts:
                with self.ctx.scratch_space() as scratch:
                    body = await self._build(scratch, 0, total, head)
                    await self.ctx.store.put(key, body, self._opts("audio/wav"))
            self.ctx.metrics.recording_uploaded_bytes_total.inc(len(body))
        else:
            await self._audio_parts(total)
            if a.get("lost"):
                return None
            if a.get("part1") is None:
                async with self.ctx.parts:
                    with self.ctx.scratch_space() as scratch:
                        body = await self._build(scratch, 0, n, head)
                        a["part1"] = await self._upload_part(key, a, 1, body)
                self._save()
                self.ctx.metrics.recording_uploaded_bytes_total.inc(len(body))
            parts = [(1, a["part1"]), *((int(p), str(e)) for p, e in a["parts"])]
            try:
                await self.ctx.store.complete_multipart(key, a["upload_id"], parts)
            except StoreError as exc:
                if exc.code != "NoSuchUpload":
                    raise
                # Completed just before a crash, or lost: adopt the object only if it is there.
                try:
                    await self._hash_object(key)
                except StoreError:
                    self._lost_upload(key, a)
                    raise exc from None
        size = len(head) + total * frame_bytes(fmt)
        got_size, digest = await self._hash_object(key)
        if got_size != size:
            raise StoreError("verify", "SizeMismatch", f"{key}: stored {got_size} bytes, expected {size}")
        a["done"] = {"key": key, "size": size, "sha256": digest}
        self._save()
        await self._delete_segment(0)
        return dict(a["done"])

    async def _hash_object(self, key: str) -> tuple[int, str]:
        return await self.ctx.store.digest(key)

    # Events -------------------------------------------------------------------------------------

    async def _events_parts(self, *, final: bool) -> None:
        e = self.state["events"]
        p = self.ctx.part_size
        limit = self.spool.events_size if final else self.durable_events
        key = self.loc.key(layout.EVENTS)
        while e["uploaded"] + (1 if final else p) <= limit:
            size = min(p, limit - e["uploaded"])
            if e["upload_id"] is None:
                e["upload_id"] = await self.ctx.store.create_multipart(key, self._opts("application/gzip"))
                self._save()
            number = len(e["parts"]) + 1
            async with self.ctx.parts:
                data = await asyncio.to_thread(self.spool.read_events, e["uploaded"], size)
                etag = await self._upload_part(key, e, number, data)
            e["parts"].append([number, etag])
            e["uploaded"] += len(data)
            self._save()
            self.ctx.metrics.recording_uploaded_bytes_total.inc(len(data))

    async def _finish_events(self) -> dict[str, Any]:
        e = self.state["events"]
        if e.get("done") is not None:
            return dict(e["done"])
        key = self.loc.key(layout.EVENTS)
        await asyncio.to_thread(self.spool.ensure_events)
        size, digest = await asyncio.to_thread(mf.file_digest, self.spool.path / EVENTS)
        self.spool.events_size = size
        if e["upload_id"] is None and size <= self.ctx.part_size:
            blob = await asyncio.to_thread(self.spool.read_events, 0, size)
            await self.ctx.store.put(key, blob, self._opts("application/gzip"))
            self.ctx.metrics.recording_uploaded_bytes_total.inc(size)
        else:
            await self._events_parts(final=True)
            parts = [(int(n), str(t)) for n, t in e["parts"]]
            try:
                await self.ctx.store.complete_multipart(key, e["upload_id"], parts)
            except StoreError as exc:
                if exc.code != "NoSuchUpload":
                    raise
                try:
                    got, _ = await self._hash_object(key)
                except StoreError:
                    got = -1
                if got != size:  # every byte is still in the spool: start this object over
                    self._lost_upload(key, e)
                    raise
        e["done"] = {"key": key, "size": size, "sha256": digest}
        self._save()
        return dict(e["done"])

    # Manifest -----------------------------------------------------------------------------------

    async def _finalize(self) -> None:
        closed = self.state["closed"]
        audio_done = await self._finish_audio(int(closed["total_frames"]))
        events_done = await self._finish_events()
        reason = closed.get("incomplete_reason")
        if audio_done is None:
            reason = reason or "upload_lost"
        objects: dict[str, Any] = {layout.EVENTS: events_done, layout.AUDIO: audio_done}
        until = self.state.get("retain_until")
        policy = self.state.get("policy") or {}
        m = mf.build(
            info=self.state["info"],
            summary=closed.get("summary"),
            audio={**closed["audio"], "channels": 2, "left": "caller", "right": "assistant"},
            events=closed["events"],
            objects=objects,
            storage={
                **self.ctx.store.describe(),
                "storage_class": policy.get("storage_class") or self.ctx.storage_class or None,
            },
            retention={"mode": policy.get("lock_mode"), "retain_until": until} if until else None,
            relay_version=self.state["relay_version"],
            complete=reason is None,
            incomplete_reason=reason,
            recorded_at=time.time(),
        )
        body = mf.encode(m)
        await self.ctx.store.put(self.loc.key(layout.MANIFEST), body, self._opts("application/json"))
        self.ctx.metrics.recording_uploaded_bytes_total.inc(len(body))
        self.ctx.metrics.recordings_total.labels(status="complete" if reason is None else "incomplete").inc()
        await asyncio.to_thread(self.spool.remove)
        self.done = True
        self.ready_since = None
        log.info(
            "recording stored",
            extra={"session_id": self.loc.session_id, "tenant": self.loc.tenant, "complete": reason is None},
        )


def mf_datetime(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
