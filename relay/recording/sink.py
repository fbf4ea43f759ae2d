"""One session's recording: the ``RecordingSink`` the session core calls.

Rules of this module:
- The three sink methods run on the forwarding hot path: they only append to a bounded deque
  (``recording.queue_size`` entries); ``record_event`` is one check and one append while nothing
  unusual is going on. The writer side (``relay.recording.writer``: decoding, hashing, placing
  audio, log lines) runs in ``process()``, called by the recorder's writer loop every round with
  a bound on the events per call, and ``flush()``, called at least once per ``fsync_interval``,
  writes what is buffered: audio first, then the log lines as one gzip member, so a line never
  reaches the disk before the audio it references.
- Sealing (``relay.recording.timeline``) runs at most every ``SEAL_EVERY_US`` of session time: audio
  is final between ``holdback`` and ``holdback + SEAL_EVERY_US`` after it happened.
- Overflow: with ``on_overflow: terminate`` (default) the first event that does not fit makes
  ``record_event`` return False (and every later call), sets ``overflowed``, calls
  ``on_overflow()`` once if set, and the recording ends as incomplete (``queue_overflow``); the
  session core then closes the session with 1011 "recording overflow". With ``drop`` the event is
  dropped, counted, and a ``recording.dropped`` line marks the hole in the log. Both count
  ``relay_recording_dropped_total``. ``close()`` is never refused.
- A spool write failure (disk full) ends the recording the same way (``spool_error``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from relay.contracts import SessionInfo, SessionSummary
from relay.events import Event
from relay.recording import eventlog as el
from relay.recording.retention import RecordingPolicy
from relay.recording.spool import SessionSpool, gzip_member
from relay.recording.timeline import Timeline
from relay.recording.writer import SessionWriter

log = logging.getLogger("relay.recording")

MEMBER_MAX = 256 * 1024
"""Pending log bytes at which the lines are flushed before the fsync interval is up."""
SEAL_EVERY_US = 250_000


def info_dict(info: SessionInfo) -> dict[str, Any]:
    d = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    d["dialect"] = info.dialect.value
    d.pop("started_ns", None)  # a monotonic reading: meaningless outside this process
    d.pop("extra", None)  # free-form: never let it carry something secret into a recording
    return d


def summary_dict(summary: SessionSummary) -> dict[str, Any]:
    return {f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)}


class SessionRecording:
    """Implements ``relay.contracts.RecordingSink`` for one session."""

    def __init__(
        self,
        info: SessionInfo,
        policy: RecordingPolicy,
        spool: SessionSpool,
        *,
        queue_size: int,
        on_overflow: str,
        dropped_counter: Any,
        relay_version: str,
        tolerance_ms: int = 200,
        holdback_ms: int = 3000,
    ) -> None:
        self.info = info
        self.policy = policy
        self.spool = spool
        self.writer = SessionWriter(info, spool, tolerance_ms=tolerance_ms, holdback_ms=holdback_ms)
        self.overflowed = False
        """True once the recording cannot keep up (or its spool failed) under ``terminate``."""
        self.on_overflow: Callable[[], None] | None = None
        """Set by the session core; called once, synchronously, when ``overflowed`` becomes True."""
        self.incomplete_reason: str | None = None
        self.summary: SessionSummary | None = None
        self.finished = False
        self.total_frames = 0
        self.flushed_frames = 0
        """Sealed frames whose audio is all written to the spool (as of the last ``flush``)."""
        self.written_seq = 0
        self.written_head = el.genesis(info.session_id)
        """Count and chain head of the lines on the spool: what the manifest may claim (after a
        spool failure, lines built in memory were never written)."""
        self.relay_version = relay_version
        self._q: deque[tuple[Any, Any, int]] = deque()
        self._max = max(1, queue_size)
        self._policy = on_overflow
        self._dropped_counter = dropped_counter
        self._drop_gap = 0
        self.dropped = 0
        self.started = False
        self._failed = False
        self._plain = True
        """Accepting events and no drop marker pending: ``record_event``'s one-check path."""
        self._sealed_at = -SEAL_EVERY_US
        self._t0_ns = info.started_ns or time.monotonic_ns()

    @property
    def log(self) -> el.EventLog:
        return self.writer.log

    @property
    def timeline(self) -> Timeline | None:
        return self.writer.timeline

    # Hot path (RecordingSink) -------------------------------------------------------------------

    def record_event(self, event: Event, t_us: int) -> bool:
        """Record an event as forwarded (after policies and redaction). Only enqueues.

        Returns False once the recording overflowed under ``terminate``: the core must end the
        session (1011 "recording overflow"). Under ``drop`` it returns True and counts the hole.
        """
        q = self._q
        if self._plain and len(q) < self._max:
            q.append((event, None, t_us))
            return True
        if self.overflowed:
            return False
        if self.summary is not None:
            return True
        if len(q) >= self._max:
            self._overflow()
            return not self.overflowed
        if self._drop_gap:
            q.append(("recording.dropped", {"events": self._drop_gap}, t_us))
            self._drop_gap = 0
            self._replain()
        q.append((event, None, t_us))
        return True

    def _replain(self) -> None:
        self._plain = not self.overflowed and self.summary is None and not self._drop_gap

    def record_relay_event(self, kind: str, body: dict[str, Any], t_us: int) -> None:
        """Record one of the relay's own events (policy action, budget event...). Only enqueues."""
        if self.summary is not None or self.overflowed:
            return
        if len(self._q) >= self._max:
            self._overflow()
            return
        self._q.append((kind, body, t_us))

    def close(self, summary: SessionSummary) -> None:
        """Seal the recording; the writer and uploader finish in their own tasks."""
        if self.summary is None:
            self.summary = summary
            self._replain()

    def _overflow(self) -> None:
        self._dropped_counter.inc()
        if self._policy == "drop":
            self._drop_gap += 1
            self.dropped += 1
            self.incomplete_reason = self.incomplete_reason or "events_dropped"
            self._replain()
            return
        self._fail("queue_overflow")  # what is queued is still written; nothing more is accepted

    def fail(self, reason: str) -> None:
        """Stop recording this session (the spool failed); under terminate the session must end."""
        self._failed = True
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.incomplete_reason = self.incomplete_reason or reason
        if self.overflowed or self._policy == "drop":
            return  # under drop the call goes on unrecorded; the manifest says why
        self.overflowed = True
        self._replain()
        cb = self.on_overflow
        if cb is not None:
            try:
                cb()
            except Exception:  # the callback belongs to the core; never let it break recording
                log.exception("on_overflow callback failed", extra={"session_id": self.info.session_id})

    @property
    def queue_depth(self) -> int:
        return len(self._q)

    # Writer (called by the recorder's loop) -----------------------------------------------------

    def now_us(self) -> int:
        return max((time.monotonic_ns() - self._t0_ns) // 1000, self.writer.last_t_us)

    def process(self, limit: int = 0) -> bool:
        """Drain the queue (at most ``limit`` events if > 0) into the buffers; seal; finish if closed.

        Returns True while events are left in the queue: the caller continues later, so one
        session's backlog never holds the event loop for long. Raises nothing.
        """
        w = self.writer
        try:
            if not self.started:
                self._start()
            q = self._q
            n = len(q)
            if 0 < limit < n:
                n = limit
            if self._failed:
                for _ in range(n):
                    w.last_t_us = max(w.last_t_us, q.popleft()[2])
            else:
                w.drain(q, n)
            if q:
                return True
            if not self._failed:
                now = self.now_us()
                if now - self._sealed_at >= SEAL_EVERY_US:
                    self._sealed_at = now
                    w.seal(now)
                if w.lines_size >= MEMBER_MAX:
                    self.flush()
            if self.summary is not None and not self.finished:
                self._finish()
        except OSError as exc:
            log.error("recording spool write failed: %s", exc, extra={"session_id": self.info.session_id})
            self._failed = True
            self._fail("spool_error")
        return False

    def _start(self) -> None:
        self.started = True
        self.spool.create()
        body = info_dict(self.info)
        body["relay_version"] = self.relay_version
        body["recording_policy"] = dataclasses.asdict(self.policy)
        self.writer.relay_line(0, "recording.open", body)

    def flush(self) -> None:
        """Write what is buffered: the audio, then the pending lines as one gzip member.

        Called by the recorder at least once per fsync interval; a line never reaches the spool
        before the audio it references.
        """
        if self._failed:
            return
        w = self.writer
        try:
            self.spool.flush()
            tl = w.timeline
            self.flushed_frames = tl.sealed if tl is not None else 0
            if w.lines:
                seq, head = w.log.seq, w.log.head  # the lines taken are all the lines up to here
                self.spool.append_events(gzip_member(w.take_lines()))
                self.written_seq, self.written_head = seq, head
        except OSError as exc:
            log.error("recording spool write failed: %s", exc, extra={"session_id": self.info.session_id})
            self._failed = True
            self._fail("spool_error")

    def _finish(self) -> None:
        s = self.summary
        assert s is not None
        w = self.writer
        end_us = max(int(s.duration_s * 1_000_000), 0)
        if self._failed:
            self.total_frames = w.start_timeline().sealed
        else:
            self.total_frames = w.finish(end_us)
        body = summary_dict(s)
        body["audio"] = self.audio_counters()
        body["complete"] = self.incomplete_reason is None
        body["incomplete_reason"] = self.incomplete_reason
        w.relay_line(max(end_us, w.last_t_us), "recording.close", body)
        self.flush()
        self.finished = True

    def audio_counters(self) -> dict[str, Any]:
        return self.writer.audio_counters(self.total_frames)
