"""The process-level recorder: admission, one sink per session, the writer loop, uploads, recovery.

Rules of this module:
- One ``Recorder`` per process, created by the server with ``await Recorder.create(...)`` and closed
  with ``await recorder.aclose()``. It owns the spool directory (an exclusive flock: one relay
  process per spool), the object store (one S3 client per process) and every background task.
- ``admit()`` and ``open()`` are synchronous and do no I/O: they run before / during the upgrade.
  ``admit()`` raises ``RecorderError`` when the spool is over ``spool_max_mb`` (or its disk is
  nearly full), so the server answers 503 instead of starting a call it could not record.
- One writer loop for all sessions, in rounds of ``TICK``: each round drains every sink's queue
  (at most ``BATCH`` events of a session at a time), spread over the round in slices of about
  ``SLICE`` of work separated by timer pauses, so forwarding never waits behind the recorder for
  more than about a slice and the recorder's share of the loop comes in small even pieces.
- Each session is flushed (audio, then its log lines as one gzip member) once per
  ``fsync_interval``, in the round of its ``slot``: the rounds of an interval share that work.
  After the last round of the interval one ``syncfs`` makes the spool durable and the durable
  marks go to the uploaders that have work. So data reaches the spool files within one interval
  (plus a round) and is durable within two.
  The spool's size (a walk of its files, for admission and the gauge) is measured every
  ``MEASURE_EVERY`` seconds.
- On start, sessions left in the spool by a previous process are finished (``relay.recording.
  recovery``); their manifests say ``incomplete_reason: relay_restart`` unless they had closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.config import RecordingConfig
from relay.contracts import SessionInfo, SessionSummary
from relay.errors import RecorderError
from relay.events import Event
from relay.metrics import RelayMetrics
from relay.recording import layout
from relay.recording.eventlog import genesis
from relay.recording.recovery import recover
from relay.recording.retention import DEFAULT_POLICY, RecordingPolicy
from relay.recording.s3 import S3Store
from relay.recording.sink import SessionRecording, info_dict, summary_dict
from relay.recording.spool import SessionSpool, SpoolLock, dir_bytes, sync
from relay.recording.store import LocalStore, ObjectStore
from relay.recording.uploader import SessionUpload, UploadContext

log = logging.getLogger("relay.recording")

TICK = 0.1
"""A round: every session's queue is drained once per round."""
SLICE = 0.0007
"""Recorder work after which the writer yields to the event loop (a session's step may add to it)."""
BATCH = 32
"""Events of one session processed before the writer looks at the clock again."""
MIN_PAUSE = 0.0005
"""Shortest pause between slices (a timer: forwarding tasks woken meanwhile run first)."""
SPREAD = 0.8
"""A round's slices are spread over this fraction of the tick."""
MEASURE_EVERY = 5.0
"""Seconds between walks of the spool for its size (admission and the spool-bytes gauge)."""
MIN_PART = 5 * 1024 * 1024
MIN_FREE_BYTES = 256 * 1024 * 1024
UPLOAD_CONCURRENCY = 2


class NullRecording:
    """The sink of a session that is not recorded (recording disabled for the process or tenant)."""

    overflowed = False
    on_overflow = None

    def record_event(self, event: Event, t_us: int) -> bool:
        return True

    def record_relay_event(self, kind: str, body: dict[str, Any], t_us: int) -> None:
        return None

    def close(self, summary: SessionSummary) -> None:
        return None


@dataclass(slots=True)
class _Live:
    sink: SessionRecording
    spool: SessionSpool
    state: dict[str, Any]
    upload: SessionUpload
    slot: int = 0
    """The round of each sync interval in which this session is flushed."""


class Recorder:
    def __init__(
        self,
        cfg: RecordingConfig,
        metrics: RelayMetrics,
        relay_version: str,
        store: ObjectStore | None,
        lock: SpoolLock | None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.relay_version = relay_version
        self.store = store
        self.root = _spool_root(cfg)
        self._lock = lock
        self.part_size = max(MIN_PART, int(cfg.s3.part_size_mb) * 1024 * 1024)
        self._live: dict[str, _Live] = {}
        self._uploads: dict[str, tuple[SessionUpload, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self.spool_bytes = 0
        self.disk_free: int | None = None
        self._next_measure = 0.0
        self._rounds = max(1, round(cfg.fsync_interval / TICK))
        """Rounds per sync interval; each session is flushed in one of them (its ``slot``)."""
        self._opened = 0
        self._ctx: UploadContext | None = None
        if store is not None:
            self._ctx = UploadContext(
                store=store,
                metrics=metrics,
                part_size=self.part_size,
                parts=asyncio.Semaphore(UPLOAD_CONCURRENCY),
                sse=cfg.s3.sse if store.kind == "s3" else "",
                kms_key_id=cfg.s3.kms_key_id if store.kind == "s3" else "",
                storage_class=cfg.s3.storage_class if store.kind == "s3" else "",
            )

    @classmethod
    async def create(cls, cfg: RecordingConfig, metrics: RelayMetrics, *, relay_version: str) -> Recorder:
        """Open the spool and the sink, start the writer, resume uploads left by a previous run.

        Raises:
            RecorderError: the spool is locked by another process, or the sink cannot be opened.
        """
        if not cfg.enabled:
            return cls(cfg, metrics, relay_version, None, None)
        lock = SpoolLock(_spool_root(cfg))
        if not await asyncio.to_thread(lock.acquire):
            raise RecorderError(f"recording spool {lock.root} is in use by another relay process")
        try:
            store: ObjectStore = (
                LocalStore(cfg.local_dir) if cfg.sink == "local" else await S3Store.open(cfg.s3)
            )
        except Exception as exc:
            lock.release()
            raise RecorderError(f"cannot open the recording sink: {exc}") from exc
        self = cls(cfg, metrics, relay_version, store, lock)
        metrics.recording_spool_limit_bytes.set(int(cfg.spool_max_mb) * 1024 * 1024)
        await self._measure()
        self._writer = self._spawn(self._writer_loop(), "recording-writer")
        await self._recover()
        return self

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # Admission and sessions ---------------------------------------------------------------------

    def admit(self) -> None:
        """Raise ``RecorderError`` if a new session could not be recorded (answer 503)."""
        if self.store is None:
            return
        if self._closing:
            raise RecorderError("the recorder is shutting down")
        limit = int(self.cfg.spool_max_mb) * 1024 * 1024
        if self.spool_bytes >= limit:
            raise RecorderError(
                f"recording spool is full ({self.spool_bytes} of {limit} bytes waiting to upload)"
            )
        if self.disk_free is not None and self.disk_free < MIN_FREE_BYTES:
            raise RecorderError("the recording spool's disk is nearly full")

    def open(self, info: SessionInfo, policy: RecordingPolicy | None) -> SessionRecording | NullRecording:
        """The recording sink of a new session (no I/O: the writer creates its files)."""
        pol = policy or DEFAULT_POLICY
        if self._ctx is None or not pol.enabled or self._closing:
            return NullRecording()
        name = layout.spool_name(info.session_id)
        if name in self._live or name in self._uploads:
            name = f"{name}.{time.monotonic_ns()}"
        spool = SessionSpool(self.root / name, self.part_size)
        overflow = pol.on_overflow or self.cfg.on_overflow
        sink = SessionRecording(
            info,
            pol,
            spool,
            queue_size=self.cfg.queue_size,
            on_overflow=overflow,
            dropped_counter=self.metrics.recording_dropped_total.labels(tenant=info.tenant, policy=overflow),
            relay_version=self.relay_version,
        )
        started = info.started_at or time.time()
        loc = layout.location(
            "" if self._ctx.store.kind == "local" else self.cfg.s3.prefix,
            info.tenant,
            started,
            info.session_id,
        )
        until = pol.retain_until(started)
        state: dict[str, Any] = {
            "version": 1,
            "info": {**info_dict(info), "started_at": started},
            "policy": dataclasses.asdict(pol),
            "relay_version": self.relay_version,
            "location": {
                "prefix": loc.prefix,
                "tenant": loc.tenant,
                "date": loc.date,
                "session_id": loc.session_id,
            },
            "retain_until": until.isoformat() if until else None,
            "format": None,
            "frames_per_part": None,
            "audio": {"upload_id": None, "next_segment": 1, "parts": [], "done": None},
            "events": {"upload_id": None, "uploaded": 0, "parts": [], "done": None},
            "closed": None,
        }
        upload = SessionUpload(self._ctx, spool, state)
        self._opened += 1
        self._live[name] = _Live(sink, spool, state, upload, self._opened % self._rounds)
        self._start_upload(name, upload)
        return sink

    def _start_upload(self, name: str, upload: SessionUpload) -> None:
        task = self._spawn(upload.run(), f"recording-upload-{name}")
        self._uploads[name] = (upload, task)
        task.add_done_callback(lambda _t: self._uploads.pop(name, None))

    # Writer loop --------------------------------------------------------------------------------

    async def _writer_loop(self) -> None:
        phase = 0
        last_sync = time.monotonic()
        while True:
            started = time.monotonic()
            await self._round(started, phase)
            # Rounds run late under load: sync on time all the same (what is flushed by then).
            if phase == self._rounds - 1 or time.monotonic() - last_sync >= self.cfg.fsync_interval:
                last_sync = time.monotonic()
                await self._durable()
            phase = (phase + 1) % self._rounds
            await asyncio.sleep(max(MIN_PAUSE, started + TICK - time.monotonic()))

    async def _round(self, started: float, phase: int | None) -> None:
        """Process every session once (its whole queue), in slices spread over the round.

        Sessions whose ``slot`` is ``phase`` are flushed as they are processed (every session
        when ``phase`` is None), so the gzip and file writes of a sync interval are spread over
        its rounds instead of piling up in one.
        """
        todo = list(self._live.values())
        total = len(todo)
        clock = time.perf_counter
        slice_start = clock()
        k = 0
        while k < len(todo):
            live = todo[k]
            k += 1
            if self._process(live, BATCH):
                todo.append(live)  # a backlog continues after the others
            elif phase is None or live.slot == phase:
                self._flush(live)
            now = clock()
            if now - slice_start > SLICE:
                # On schedule when the share of sessions done matches the share of the round gone.
                due = started + SPREAD * TICK * min(k, total) / max(total, 1)
                await asyncio.sleep(max(MIN_PAUSE, due - time.monotonic()))
                slice_start = clock()
        self.metrics.recording_queue_depth.set(sum(live.sink.queue_depth for live in self._live.values()))

    async def _process_all(self) -> None:
        """Drain every queue now (shutdown, tests), yielding between slices."""
        started = time.perf_counter()
        for live in list(self._live.values()):
            while True:
                more = self._process(live, BATCH)
                if time.perf_counter() - started > SLICE:
                    await asyncio.sleep(0)
                    started = time.perf_counter()
                if not more:
                    break
        self.metrics.recording_queue_depth.set(sum(live.sink.queue_depth for live in self._live.values()))

    def _process(self, live: _Live, limit: int = 0) -> bool:
        """Process one session (at most ``limit`` events); True if its queue still holds some."""
        sink, state = live.sink, live.state
        try:
            if not sink.started:
                live.spool.create()
                live.spool.save_state(state)
            more = sink.process(limit)
            if state["format"] is None and live.spool.fmt is not None:
                f = live.spool.fmt
                state["format"] = {"encoding": f.encoding, "rate": f.rate}
                state["frames_per_part"] = live.spool.frames_per_segment
                live.spool.save_state(state)
            if sink.finished and state["closed"] is None:
                state["closed"] = {
                    "summary": summary_dict(sink.summary) if sink.summary else None,
                    "total_frames": sink.total_frames,
                    "audio": sink.audio_counters(),
                    "events": {
                        "count": sink.written_seq,
                        "genesis": genesis(sink.info.session_id).hex(),
                        "head": sink.written_head.hex(),
                    },
                    "incomplete_reason": sink.incomplete_reason,
                }
                live.spool.save_state(state)
            return more
        except Exception as exc:  # one broken session must not stop the recorder for the others
            log.exception("recording failed", extra={"session_id": sink.info.session_id})
            sink.fail("spool_error" if isinstance(exc, OSError) else "recorder_error")
            return False

    def _flush(self, live: _Live) -> None:
        try:
            live.sink.flush()
        except Exception:  # one broken session must not stop the recorder for the others
            log.exception("recording flush failed", extra={"session_id": live.sink.info.session_id})
            live.sink.fail("recorder_error")

    async def _sync(self) -> None:
        """Flush every session now, make the spool durable, hand the marks over (shutdown, tests)."""
        started = time.perf_counter()
        for live in list(self._live.values()):
            if time.perf_counter() - started > SLICE:
                await asyncio.sleep(0)
                started = time.perf_counter()
            self._flush(live)
        await self._durable()

    async def _durable(self) -> None:
        """One ``syncfs`` for what every session has flushed, then the marks to the uploaders."""
        marks = [
            (name, live, live.sink.flushed_frames, live.spool.events_size, live.state["closed"] is not None)
            for name, live in self._live.items()
        ]
        try:
            await asyncio.to_thread(sync, self.root)
        except OSError:
            log.exception("recording spool sync failed")
            return
        for name, live, frames, events_size, closed in marks:
            live.upload.mark_durable(frames, events_size, closed)
            if closed:
                self._live.pop(name, None)
        if time.monotonic() >= self._next_measure:
            await self._measure()
        else:
            self._upload_lag()

    async def _measure(self) -> None:
        """Spool size and free disk (walks the spool: every ``MEASURE_EVERY``), upload lag."""
        self._next_measure = time.monotonic() + MEASURE_EVERY
        self.spool_bytes = await asyncio.to_thread(dir_bytes, self.root)
        try:
            self.disk_free = (await asyncio.to_thread(shutil.disk_usage, self.root)).free
        except OSError:
            self.disk_free = None
        self.metrics.recording_spool_bytes.set(self.spool_bytes)
        self._upload_lag()

    def _upload_lag(self) -> None:
        now = time.time()
        lag = max((now - u.ready_since for u, _ in self._uploads.values() if u.ready_since), default=0.0)
        self.metrics.recording_upload_lag_seconds.set(lag)

    # Recovery -----------------------------------------------------------------------------------

    async def _recover(self) -> None:
        assert self._ctx is not None
        try:
            names = sorted(e.name for e in self.root.iterdir() if e.is_dir() and not e.name.startswith("."))
        except OSError:
            return
        for name in names:
            found = await asyncio.to_thread(recover, self.root / name, self.part_size)
            if found is None:
                continue
            spool, state = found
            upload = SessionUpload(self._ctx, spool, state)
            upload.mark_durable(int(state["closed"]["total_frames"]), spool.events_size, True)
            log.info(
                "resuming the upload of a recording left in the spool",
                extra={"session_id": state["info"]["session_id"]},
            )
            self._start_upload(name, upload)

    # Shutdown -----------------------------------------------------------------------------------

    async def aclose(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - the server's contract
        """Seal open sessions, flush the spool, give uploads up to ``timeout`` s, then stop.

        Whatever is not uploaded by then stays in the spool and the next start finishes it.
        """
        if self._closed:
            return
        self._closed = self._closing = True
        if self.store is None:
            return
        deadline = time.monotonic() + timeout
        for live in self._live.values():
            if live.sink.summary is None:
                live.sink.incomplete_reason = live.sink.incomplete_reason or "relay_shutdown"
                live.sink.close(_shutdown_summary(live.sink))
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._process_all()
        await self._sync()
        tasks = [t for _, t in self._uploads.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                log.warning("%d recordings left in the spool for the next start", len(pending))
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for live in self._live.values():
            live.spool.close_files()
        await self.store.aclose()
        if self._lock is not None:
            self._lock.release()


def _spool_root(cfg: RecordingConfig) -> Path:
    return Path(os.path.abspath(cfg.spool_dir))


def _shutdown_summary(sink: SessionRecording) -> SessionSummary:
    return SessionSummary(
        ended_at=time.time(),
        duration_s=sink.now_us() / 1e6,
        client_close_code=None,
        client_close_reason="",
        upstream_close_code=None,
        upstream_close_reason="",
        outcome="relay_shutdown",
        events_client_to_upstream=0,
        events_upstream_to_client=0,
    )
