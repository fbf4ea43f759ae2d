"""One session's recording: the ``RecordingSink`` the session core calls, and its writer.

Rules of this module:
- The three sink methods run on the forwarding hot path: they only append to a bounded deque
  (``recording.queue_size`` entries). Everything else (base64 decoding, hashing, placing audio,
  spool writes) happens in ``process()``, called by the recorder's writer loop every tick.
- Overflow: with ``on_overflow: terminate`` (default) the first event that does not fit makes
  ``record_event`` return False (and every later call), sets ``overflowed``, calls
  ``on_overflow()`` once if set, and the recording ends as incomplete (``queue_overflow``); the
  session core then closes the session with 1011 "recording overflow". With ``drop`` the event is dropped, counted, and a ``recording.dropped`` line marks the
  hole in the log. Both count ``relay_recording_dropped_total``. ``close()`` is never refused.
- A spool write failure (disk full) ends the recording the same way (``spool_error``).
- The sink tracks the session's audio formats itself from ``session.update`` (client) and
  ``session.created`` / ``session.updated`` (upstream), in both dialects. The WAV takes the input
  format in effect at the first audio (or at the first seal); see ``relay.recording.timeline``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from relay.contracts import SessionInfo, SessionSummary
from relay.events import C2U, Event, string_span
from relay.recording import eventlog as el
from relay.recording.audioformat import PCM16_24K, AudioFormat, convert, session_formats
from relay.recording.retention import RecordingPolicy
from relay.recording.spool import SessionSpool, gzip_member
from relay.recording.timeline import Op, Timeline

log = logging.getLogger("relay.recording")

CALLER_AUDIO = "input_audio_buffer.append"
ASSISTANT_AUDIO = frozenset({"response.output_audio.delta", "response.audio.delta"})
ITEM_EVENTS = frozenset(
    {
        "conversation.item.create",
        "conversation.item.retrieved",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.created",
        "response.output_item.added",
        "response.output_item.done",
    }
)
MEMBER_MAX = 256 * 1024


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
        self.log = el.EventLog(info.session_id)
        self.overflowed = False
        """True once the recording cannot keep up (or its spool failed) under ``terminate``."""
        self.on_overflow: Callable[[], None] | None = None
        """Set by the session core; called once, synchronously, when ``overflowed`` becomes True."""
        self.incomplete_reason: str | None = None
        self.summary: SessionSummary | None = None
        self.finished = False
        self.total_frames = 0
        self.relay_version = relay_version
        self._q: deque[tuple[Any, Any, int]] = deque()
        self._max = max(1, queue_size)
        self._policy = on_overflow
        self._dropped_counter = dropped_counter
        self._drop_gap = 0
        self.dropped = 0
        self.started = False
        self._failed = False
        self._lines: list[bytes] = []
        self._lines_size = 0
        self._tolerance_ms = tolerance_ms
        self._holdback_ms = holdback_ms
        self.in_fmt: AudioFormat = PCM16_24K
        self.out_fmt: AudioFormat = PCM16_24K
        self.timeline: Timeline | None = None
        self.last_t_us = 0
        self._t0_ns = info.started_ns or time.monotonic_ns()

    # Hot path (RecordingSink) -------------------------------------------------------------------

    def record_event(self, event: Event, t_us: int) -> bool:
        """Record an event as forwarded (after policies and redaction). Only enqueues.

        Returns False once the recording overflowed under ``terminate``: the core must end the
        session (1011 "recording overflow"). Under ``drop`` it returns True and counts the hole.
        """
        if self.overflowed:
            return False
        if self.summary is not None:
            return True
        if len(self._q) >= self._max:
            self._overflow()
            return not self.overflowed
        if self._drop_gap:
            self._q.append(("recording.dropped", {"events": self._drop_gap}, t_us))
            self._drop_gap = 0
        self._q.append((event, None, t_us))
        return True

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

    def _overflow(self) -> None:
        self._dropped_counter.inc()
        if self._policy == "drop":
            self._drop_gap += 1
            self.dropped += 1
            self.incomplete_reason = self.incomplete_reason or "events_dropped"
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
        return max((time.monotonic_ns() - self._t0_ns) // 1000, self.last_t_us)

    def process(self) -> None:
        """Drain the queue into the spool; seal; finish if closed. Raises nothing."""
        try:
            if not self.started:
                self._start()
            q = self._q
            while q:
                a, b, t_us = q.popleft()
                if t_us > self.last_t_us:
                    self.last_t_us = t_us
                if self._failed:
                    continue
                if isinstance(a, Event):
                    self._event(a, t_us)
                else:
                    self._emit(self.log.relay_line(t_us, a, b if isinstance(b, dict) else {"value": b}))
            if not self._failed:
                self._seal(self.now_us())
                self.spool.flush()
                if self._lines_size >= MEMBER_MAX:
                    self.flush_events()
            if self.summary is not None and not self.finished:
                self._finish()
        except OSError as exc:
            log.error("recording spool write failed: %s", exc, extra={"session_id": self.info.session_id})
            self._failed = True
            self._fail("spool_error")

    def _start(self) -> None:
        self.started = True
        self.spool.create()
        body = info_dict(self.info)
        body["relay_version"] = self.relay_version
        body["recording_policy"] = dataclasses.asdict(self.policy)
        self._emit(self.log.relay_line(0, "recording.open", body))

    def _emit(self, line: bytes) -> None:
        self._lines.append(line)
        self._lines_size += len(line)

    def flush_events(self) -> None:
        """Append the pending lines as one gzip member (called at least once per fsync interval)."""
        if self._lines and not self._failed:
            data = b"".join(self._lines)
            self._lines.clear()
            self._lines_size = 0
            try:
                self.spool.append_events(gzip_member(data))
            except OSError as exc:
                log.error("recording spool write failed: %s", exc, extra={"session_id": self.info.session_id})
                self._failed = True
                self._fail("spool_error")

    def _tl(self) -> Timeline:
        tl = self.timeline
        if tl is None:
            fmt = self.in_fmt
            self.spool.set_format(fmt)
            tl = self.timeline = Timeline(
                fmt.rate, fmt.sample_bytes, tolerance_ms=self._tolerance_ms, holdback_ms=self._holdback_ms
            )
            self._emit(
                self.log.relay_line(
                    self.last_t_us, "recording.format", {"encoding": fmt.encoding, "rate": fmt.rate}
                )
            )
        return tl

    def _apply(self, ops: list[Op]) -> None:
        if ops:
            self.spool.apply(ops)
        tl = self.timeline
        if tl is not None and tl.has_cuts:
            self._log_cuts(tl)

    def _seal(self, now_us: int) -> None:
        if self.timeline is None and now_us < self._holdback_ms * 1000:
            return
        tl = self._tl()
        self._apply(tl.seal(tl.frame_at(now_us)))

    def _finish(self) -> None:
        s = self.summary
        assert s is not None
        tl = self._tl()
        end_us = max(int(s.duration_s * 1_000_000), 0)
        if self._failed:
            self.total_frames = tl.sealed
        else:
            self.total_frames, ops = tl.finish(tl.frame_at(end_us))
            self._apply(ops)
            self.spool.flush()
        body = summary_dict(s)
        body["audio"] = self.audio_counters()
        body["complete"] = self.incomplete_reason is None
        body["incomplete_reason"] = self.incomplete_reason
        self._emit(self.log.relay_line(max(end_us, self.last_t_us), "recording.close", body))
        self.flush_events()
        self.finished = True

    def audio_counters(self) -> dict[str, Any]:
        tl = self.timeline
        fmt = self.spool.fmt or self.in_fmt
        return {
            "encoding": fmt.encoding,
            "sample_rate": fmt.rate,
            "frames": self.total_frames,
            "caller_frames": tl.caller_frames if tl else 0,
            "assistant_frames": tl.assistant_frames if tl else 0,
            "heard_frames": tl.heard_frames if tl else 0,
            "late_cut_frames": tl.late_cut_frames if tl else 0,
        }

    # Events -------------------------------------------------------------------------------------

    def _event(self, ev: Event, t_us: int) -> None:
        t = ev.type
        if ev.direction is C2U:
            if t == CALLER_AUDIO:
                self._audio(ev, t_us, "audio", caller=True)
                return
            if t == "session.update":
                self._formats(ev, client=True)
        elif t in ASSISTANT_AUDIO:
            self._audio(ev, t_us, "delta", caller=False)
            return
        elif t in ("session.created", "session.updated"):
            self._formats(ev, client=False)
        line_json = self._json(ev)
        self._emit(self.log.line(t_us, ev.direction.label, t, line_json))
        if t == "conversation.item.truncate" and ev.direction is C2U:
            self._truncate(ev, t_us)
        elif t == "response.done":
            self._cancelled(ev, t_us)

    def _json(self, ev: Event) -> bytes:
        """The event as a single-line JSON value, inline item audio omitted."""
        try:
            payload = ev.payload()
        except orjson.JSONDecodeError:
            return orjson.dumps(ev.text)
        if ev.type in ITEM_EVENTS:
            stripped = el.omit_item_audio(payload)
            if stripped is not None:
                return orjson.dumps(stripped)
        text = ev.text
        if "\n" in text or "\r" in text:
            return orjson.dumps(payload)
        return text.encode()

    def _formats(self, ev: Event, *, client: bool) -> None:
        try:
            session = ev.payload().get("session")
        except orjson.JSONDecodeError:
            return
        fin, fout = session_formats(session)
        if fin is not None:
            self.in_fmt = fin
        if fout is not None:
            self.out_fmt = fout

    def _audio(self, ev: Event, t_us: int, key: str, *, caller: bool) -> None:
        text = ev.text
        span: tuple[int, int] | None = None
        b64: str | None = None
        if caller:  # client events arrive parsed: find the parsed value's own bytes in the text
            value = ev.payload().get(key)
            if isinstance(value, str) and value:
                i = text.find('"audio":"') + 9  # the usual compact form; else search the value
                if i < 9 or not text.startswith(value, i):
                    i = text.find(value)
                j = i + len(value)
                if i > 0 and j < len(text) and text[i - 1] == '"' and text[j] == '"':
                    span, b64 = (i, j), value
        else:
            span = string_span(text, key)
            if span is not None:
                b64 = text[span[0] : span[1]]
        if span is None:
            try:
                value = ev.payload().get(key)
            except orjson.JSONDecodeError:
                value = None
            b64 = value if isinstance(value, str) else None
        data = el.decode_b64(b64) if b64 is not None else None
        if data is None:
            self._emit(self.log.line(t_us, ev.direction.label, ev.type, self._json(ev)))
            return
        tl = self._tl()
        src = self.in_fmt if caller else self.out_fmt
        wav_fmt = self.spool.fmt or src
        laid = convert(data, src, wav_fmt)
        if caller:
            place, ops = tl.caller(laid, t_us)
        else:
            item_id, response_id = self._ids(ev, text)
            place, ops = tl.assistant(laid, t_us, item_id, response_id)
        self._apply(ops)
        ref = el.audio_ref(
            "caller" if caller else "assistant",
            place.frame,
            place.frames,
            data,
            converted_from=src.wire_name if src != wav_fmt else "",
        )
        if span is not None:
            body = text[: span[0] - 1].encode() + ref + text[span[1] + 1 :].encode()
            if b"\n" in body or b"\r" in body:
                body = orjson.dumps({**ev.payload(), key: orjson.loads(ref)})
        else:
            body = orjson.dumps({**ev.payload(), key: orjson.loads(ref)})
        self._emit(self.log.line(t_us, ev.direction.label, ev.type, body))

    @staticmethod
    def _ids(ev: Event, text: str) -> tuple[str, str]:
        ids = []
        for k in ("item_id", "response_id"):
            span = string_span(text, k)
            if span is not None:
                ids.append(text[span[0] : span[1]])
            else:
                v = ev.payload().get(k)
                ids.append(v if isinstance(v, str) else "")
        return ids[0], ids[1]

    def _truncate(self, ev: Event, t_us: int) -> None:
        p = ev.payload()
        item_id, end_ms = p.get("item_id"), p.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(end_ms, int) or self.timeline is None:
            return
        self._apply(self.timeline.truncate(item_id, end_ms))

    def _cancelled(self, ev: Event, t_us: int) -> None:
        if self.timeline is None:
            return
        try:
            resp = ev.payload().get("response")
        except orjson.JSONDecodeError:
            return
        if not isinstance(resp, dict) or resp.get("status") != "cancelled":
            return
        rid = resp.get("id")
        if isinstance(rid, str):
            self.timeline.cancel(rid, t_us)

    def _log_cuts(self, tl: Timeline) -> None:
        for cut in tl.take_cuts():
            body = {
                "item_id": cut.item_id,
                "reason": cut.reason,
                "frame": cut.frame,
                "frames": cut.frames,
                "late_frames": cut.late_frames,
            }
            self._emit(self.log.relay_line(self.last_t_us, "recording.cut", body))
