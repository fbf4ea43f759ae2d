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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from relay.metrics import RelayMetrics
from relay.recording import layout
from relay.recording import manifest as mf
from relay.recording.audioformat import AudioFormat
from relay.recording.spool import EVENTS, SessionSpool
from relay.recording.store import ObjectStore, PutOptions, StoreError
from relay.recording.wav import frame_bytes, header, interleave

log = logging.getLogger("relay.recording")

_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 30.0
_INTERLEAVE_CHUNK = 1 << 17


@dataclass(slots=True)
class UploadContext:
    store: ObjectStore
    metrics: RelayMetrics
    part_size: int
    parts: asyncio.Semaphore
    """Bounds concurrent part builds + uploads process-wide (memory: ~4 × part size each)."""
    sse: str = ""
    kms_key_id: str = ""
    storage_class: str = ""


def _interleave_slow(left: bytes, right: bytes, fmt: AudioFormat) -> bytes:
    """Interleave in slices, releasing the GIL between them (runs in a worker thread)."""
    sb = fmt.sample_bytes
    step = _INTERLEAVE_CHUNK * sb
    out = []
    for i in range(0, len(left), step):
        out.append(interleave(left[i : i + step], right[i : i + step], fmt))
        time.sleep(0)
    return b"".join(out)


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
        if self.ready_since is None and self._has_work():
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
                data = await self._build(seg, frames)
                etag = await self._upload_part(key, a, seg + 1, data)
            a["parts"].append([seg + 1, etag])
            a["next_segment"] = seg + 1
            self._save()
            self.spool.delete_segment(seg)
            self.ctx.metrics.recording_uploaded_bytes_total.inc(len(data))

    async def _build(self, seg: int, frames: int) -> bytes:
        fmt = self._fmt
        if self.spool.fmt != fmt:
            self.spool.set_format(fmt)
        left = await asyncio.to_thread(self.spool.read_segment, 0, seg, frames)
        right = await asyncio.to_thread(self.spool.read_segment, 1, seg, frames)
        return await asyncio.to_thread(_interleave_slow, left, right, fmt)

    async def _upload_part(self, key: str, up: dict[str, Any], number: int, data: bytes) -> str:
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
                body = head + (await self._build(0, total) if total else b"")
                await self.ctx.store.put(key, body, self._opts("audio/wav"))
            self.ctx.metrics.recording_uploaded_bytes_total.inc(len(body))
        else:
            await self._audio_parts(total)
            if a.get("lost"):
                return None
            if a.get("part1") is None:
                async with self.ctx.parts:
                    body = head + await self._build(0, n)
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
        self.spool.delete_segment(0)
        return dict(a["done"])

    async def _hash_object(self, key: str) -> tuple[int, str]:
        h = hashlib.sha256()
        size = 0
        async for chunk in self.ctx.store.read(key):
            size += len(chunk)
            h.update(chunk)
        return size, h.hexdigest()

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
