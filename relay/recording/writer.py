"""One session's events turned into spool audio and hash-chained log lines (the writer side).

``SessionRecording`` (``relay.recording.sink``) queues events on the forwarding path; the recorder's
writer loop hands the queue to ``SessionWriter.drain``, which does all the work per event.

Rules of this module:
- Called only from the writer loop, never from forwarding. No awaits and no file I/O of its own:
  audio goes to the spool's coalescing buffers (``SessionSpool.write`` / ``fill``), log lines to
  ``lines`` until the sink flushes them (audio first, then the lines).
- Every event gets its own line, in queue order; ``relay_line`` covers the relay's own events.
- Per audio event the minimum is done, once: the base64 value is located in the wire text (for
  a client append, the parsed value is matched against the end of the text in O(1); upstream
  deltas use ``string_span``), decoded once, hashed once, laid with the timeline's lean
  ``lay_caller`` / ``lay_assistant``, appended to the spool's buffer, and the log line is one
  bytes formatting of the text around the value with the reference in its place
  (``EventLog.audio_line``). Formats are compared once per format change, never per event.
- Anything unusual takes the general path, which yields the same bytes for the same input: a
  value that cannot be located with certainty (nested, escaped, not last), line breaks in the
  text (re-serialised), a torn trailing sample, format conversion, a pending cancellation cut.
- Formats: tracked from ``session.update`` (client) and ``session.created`` / ``session.updated``
  (upstream), both dialects. The WAV takes the input format in effect at the first audio (or at
  the first seal); chunks in another format are converted and marked ``converted``.
"""

from __future__ import annotations

import binascii
from collections import deque
from typing import Any

import orjson
from pybase64 import b64decode

from relay.contracts import SessionInfo
from relay.events import C2U, Event, string_span
from relay.recording import eventlog as el
from relay.recording.audioformat import PCM16_24K, AudioFormat, convert, session_formats
from relay.recording.spool import SessionSpool
from relay.recording.timeline import LEFT, RIGHT, Op, Timeline

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
_CALLER_PREFIX = el.member_prefix(C2U.label, CALLER_AUDIO)


class SessionWriter:
    def __init__(
        self, info: SessionInfo, spool: SessionSpool, *, tolerance_ms: int = 200, holdback_ms: int = 3000
    ) -> None:
        self.info = info
        self.spool = spool
        self.log = el.EventLog(info.session_id)
        self.lines: list[bytes] = []
        self.lines_size = 0
        self.timeline: Timeline | None = None
        self.in_fmt: AudioFormat = PCM16_24K
        self.out_fmt: AudioFormat = PCM16_24K
        self.last_t_us = 0
        self._tolerance_ms = tolerance_ms
        self._holdback_ms = holdback_ms
        self._sb = 2
        self._caller_direct = False
        """The timeline exists and caller chunks are in the WAV's format: the lean path applies."""
        self._assistant_direct = False
        self._pre = ""
        self._pre_b = b""
        """The last wire text before a caller audio value, and its bytes (a client repeats it)."""

    # Lines --------------------------------------------------------------------------------------

    def emit(self, line: bytes) -> None:
        self.lines.append(line)
        self.lines_size += len(line)

    def take_lines(self) -> bytes:
        """The pending lines, joined; the buffer is emptied."""
        data = b"".join(self.lines)
        self.lines.clear()
        self.lines_size = 0
        return data

    def relay_line(self, t_us: int, kind: str, body: Any) -> None:
        self.emit(self.log.relay_line(t_us, kind, body if isinstance(body, dict) else {"value": body}))

    # Draining the queue -------------------------------------------------------------------------

    def drain(self, q: deque[tuple[Any, Any, int]], n: int) -> None:
        """Turn the next ``n`` queued items (event or relay kind, relay body, t_us) into lines."""
        popleft = q.popleft
        fast = self._caller_fast
        last = self.last_t_us  # kept in a local: the cheap path does not read it
        try:
            for _ in range(n):
                a, b, t_us = popleft()
                if t_us > last:
                    last = t_us
                if a.__class__ is str:
                    self.last_t_us = last
                    self.relay_line(t_us, a, b)
                elif a.type == CALLER_AUDIO and a.direction is C2U:
                    if not (self._caller_direct and fast(a, t_us)):
                        self.last_t_us = last
                        self._audio(a, t_us, True)
                else:
                    self.last_t_us = last
                    self.event(a, t_us)
        finally:
            self.last_t_us = last

    def _caller_fast(self, ev: Event, t_us: int) -> bool:
        """The common client append, start to end; False (nothing done) means: general path.

        The value is the parsed ``audio`` (orjson keeps the last of duplicate keys). It is taken
        as the text's characters ``[i, len - 2)`` when the text ends with them plus ``"}``, a
        top-level ``"audio":"`` (or ``"audio": "``) opens them, and their count equals the
        value's length: escapes would make the raw string longer, and a quote inside would make
        the last member's value shorter, so equal lengths mean the raw characters are the value.
        """
        text = ev.text
        b64 = ev.payload().get("audio")
        if b64.__class__ is not str:
            return False
        i = len(text) - 2 - len(b64)
        if i < 10 or not text.endswith('"}'):
            return False
        pre = self._pre
        if not (len(pre) == i - 1 and text.startswith(pre) and text.startswith('"', i - 1)):
            if not (text.startswith('"audio":"', i - 9) or text.startswith('"audio": "', i - 10)):
                return False
            if text.find("{", 1, i) >= 0 or text.find("[", 0, i) >= 0:
                return False
            pre = text[: i - 1]
            if "\n" in pre or "\r" in pre:
                return False
            self._pre, self._pre_b = pre, pre.encode()
        try:
            data = b64decode(b64, None, True)  # validating (positional: keywords cost here)
        except (binascii.Error, ValueError):
            return False  # the general path decodes leniently
        sb = self._sb
        n = len(data) // sb
        if not n or n * sb != len(data):
            return False
        tl = self.timeline
        if tl is None:
            return False
        end, heard = tl.left_end, tl.caller_end
        start = tl.lay_caller(n, t_us)
        spool = self.spool
        if start != end:
            spool.fill(LEFT, end, start - end)
        if start != heard and heard:
            self._pause(t_us, heard, start)
        spool.write(LEFT, start, data)
        line = self.log.audio_line(t_us, _CALLER_PREFIX, self._pre_b, b"caller", start, n, data, b"}", "")
        self.lines.append(line)
        self.lines_size += len(line)
        return True

    def _delta_fast(self, ev: Event, t_us: int) -> bool:
        """An output audio delta in the server's compact form; False (nothing done): general path.

        The value is taken from the text when ``"delta":"`` is a top-level member (no ``{`` or
        ``[`` before it but the opening brace) up to the next quote, and it decodes as strict
        base64: an escape would contain a backslash, which strict base64 refuses.
        """
        text = ev.text
        i = text.find('"delta":"')
        if i < 1 or text[i - 1] == "\\" or text.find("{", 1, i) >= 0 or text.find("[", 0, i) >= 0:
            return False
        k = text.find('"', i + 9)
        if k < 0:
            return False
        try:
            data = b64decode(text[i + 9 : k], None, True)
        except (binascii.Error, ValueError):
            return False
        sb = self._sb
        n = len(data) // sb
        tl = self.timeline
        if tl is None or not n or n * sb != len(data) or tl.cuts_pending:
            return False
        pre, post = text[:i], text[k + 1 :]
        item_id, response_id = _member_in(pre, "item_id"), _member_in(pre, "response_id")
        if (
            item_id is None
            or response_id is None
            or "\n" in pre
            or "\r" in pre
            or "\n" in post
            or "\r" in post
        ):
            return False
        end = tl.right_end
        start = tl.lay_assistant(n, t_us, item_id, response_id)
        spool = self.spool
        if start > end:
            spool.fill(RIGHT, end, start - end)
        spool.write(RIGHT, start, data)
        prefix = el.member_prefix(ev.direction.label, ev.type)
        line = self.log.audio_line(
            t_us, prefix, (pre + '"delta":').encode(), b"assistant", start, n, data, post.encode(), ""
        )
        self.lines.append(line)
        self.lines_size += len(line)
        return True

    def event(self, ev: Event, t_us: int) -> None:
        """Any event but the common client append (which ``drain`` routes itself)."""
        t = ev.type
        if ev.direction is C2U:
            if t == CALLER_AUDIO:
                self._audio(ev, t_us, True)
                return
            if t == "session.update":
                self._formats(ev)
        elif t in ASSISTANT_AUDIO:
            if not (self._assistant_direct and self._delta_fast(ev, t_us)):
                self._audio(ev, t_us, False)
            return
        elif t in ("session.created", "session.updated"):
            self._formats(ev)
        self.emit(self.log.line_after(t_us, el.member_prefix(ev.direction.label, t), self._json(ev)))
        if t == "conversation.item.truncate" and ev.direction is C2U:
            self._truncate(ev)
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

    # Audio, general path ------------------------------------------------------------------------

    def _audio(self, ev: Event, t_us: int, caller: bool) -> None:
        """An audio event: lay its audio, log it with a reference in place of the base64 value."""
        text = ev.text
        key = "audio" if caller else "delta"
        i = j = -1  # the value's characters in the text (quotes excluded), when located
        b64: Any = None
        if caller:  # client events arrive parsed: find the parsed value's own characters
            b64 = ev.payload().get(key)
            if isinstance(b64, str) and b64:
                i = text.find('"audio":"') + 9
                if i < 9 or not text.startswith(b64, i):
                    i = text.find(b64)
                j = i + len(b64)
                if not (
                    i > 0
                    and text[i - 1] == '"'
                    and text.startswith('"', j)
                    and text.find("{", 1, i) < 0
                    and text.find("[", 0, i) < 0
                ):
                    i = -1  # not certainly the top-level member: re-serialised below
        else:
            span = string_span(text, key)
            if span is not None:
                i, j = span
                b64 = text[i:j]
            else:
                b64 = _value(ev, key)
        data = el.decode_b64(b64) if isinstance(b64, str) else None
        if data is None:
            self.emit(self.log.line(t_us, ev.direction.label, ev.type, self._json(ev)))
            return
        tl = self.timeline or self.start_timeline()
        spool = self.spool
        n = len(data) // self._sb
        converted = ""
        direct = self._caller_direct if caller else self._assistant_direct
        heard = tl.caller_end
        if direct and n * self._sb == len(data) and (caller or not tl.cuts_pending):
            if caller:
                end = tl.left_end
                start = tl.lay_caller(n, t_us)
                if start > end:
                    spool.fill(LEFT, end, start - end)
                spool.write(LEFT, start, data)
            else:
                item_id, response_id = _ids(ev, text)
                end = tl.right_end
                start = tl.lay_assistant(n, t_us, item_id, response_id)
                if start > end:
                    spool.fill(RIGHT, end, start - end)
                spool.write(RIGHT, start, data)
        else:
            laid = data
            if not direct:
                src = self.in_fmt if caller else self.out_fmt
                assert spool.fmt is not None
                laid = convert(data, src, spool.fmt)
                converted = src.wire_name
            if caller:
                place, ops = tl.caller(laid, t_us)
            else:
                item_id, response_id = _ids(ev, text)
                place, ops = tl.assistant(laid, t_us, item_id, response_id)
            self.apply(ops)
            start, n = place.frame, place.frames
        if caller and n and start != heard and heard:
            self._pause(t_us, heard, start)
        prefix = el.member_prefix(ev.direction.label, ev.type)
        track = b"caller" if caller else b"assistant"
        if i >= 0:
            pre, post = text[: i - 1], text[j + 1 :]
            if not ("\n" in pre or "\r" in pre or "\n" in post or "\r" in post):
                self.emit(
                    self.log.audio_line(
                        t_us, prefix, pre.encode(), track, start, n, data, post.encode(), converted
                    )
                )
                return
        ref = el.audio_ref(track.decode(), start, n, data, converted_from=converted)
        body = orjson.dumps({**ev.payload(), key: orjson.loads(ref)})
        self.emit(self.log.line_after(t_us, prefix, body))

    def _pause(self, t_us: int, frame: int, start: int) -> None:
        """Log the silence the left channel got between the caller's audio ending at ``frame`` and
        the next piece starting at ``start``: the caller paused, or its audio reached the relay
        late (a stall); either way the log says where the recording is not the caller's audio."""
        self.relay_line(t_us, "recording.pause", {"track": "caller", "frame": frame, "frames": start - frame})

    # Timeline -----------------------------------------------------------------------------------

    def start_timeline(self) -> Timeline:
        """The timeline, created at the first audio (or seal) in the input format then in effect."""
        tl = self.timeline
        if tl is None:
            fmt = self.in_fmt
            self.spool.set_format(fmt)
            tl = self.timeline = Timeline(
                fmt.rate, fmt.sample_bytes, tolerance_ms=self._tolerance_ms, holdback_ms=self._holdback_ms
            )
            self._sb = fmt.sample_bytes
            self._directness()
            self.relay_line(self.last_t_us, "recording.format", {"encoding": fmt.encoding, "rate": fmt.rate})
        return tl

    def apply(self, ops: list[Op]) -> None:
        if ops:
            self.spool.apply(ops)
        tl = self.timeline
        if tl is not None and tl.has_cuts:
            for cut in tl.take_cuts():
                body = {
                    "item_id": cut.item_id,
                    "reason": cut.reason,
                    "frame": cut.frame,
                    "frames": cut.frames,
                    "late_frames": cut.late_frames,
                }
                self.relay_line(self.last_t_us, "recording.cut", body)

    def seal(self, now_us: int) -> None:
        if self.timeline is None and now_us < self._holdback_ms * 1000:
            return
        tl = self.start_timeline()
        self.apply(tl.seal(tl.frame_at(now_us)))

    def finish(self, end_us: int) -> int:
        """Close the timeline at ``end_us``; returns the WAV's length in frames."""
        tl = self.start_timeline()
        total, ops = tl.finish(tl.frame_at(end_us))
        self.apply(ops)
        return total

    def audio_counters(self, total_frames: int) -> dict[str, Any]:
        tl = self.timeline
        fmt = self.spool.fmt or self.in_fmt
        return {
            "encoding": fmt.encoding,
            "sample_rate": fmt.rate,
            "frames": total_frames,
            "caller_frames": tl.caller_frames if tl else 0,
            "assistant_frames": tl.assistant_frames if tl else 0,
            "heard_frames": tl.heard_frames if tl else 0,
            "late_cut_frames": tl.late_cut_frames if tl else 0,
        }

    # Formats and cuts ---------------------------------------------------------------------------

    def _formats(self, ev: Event) -> None:
        try:
            session = ev.payload().get("session")
        except orjson.JSONDecodeError:
            return
        fin, fout = session_formats(session)
        if fin is not None:
            self.in_fmt = fin
        if fout is not None:
            self.out_fmt = fout
        self._directness()

    def _directness(self) -> None:
        wav = self.spool.fmt
        self._caller_direct = wav is not None and self.in_fmt == wav
        self._assistant_direct = wav is not None and self.out_fmt == wav

    def _truncate(self, ev: Event) -> None:
        p = ev.payload()
        item_id, end_ms = p.get("item_id"), p.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(end_ms, int) or self.timeline is None:
            return
        self.apply(self.timeline.truncate(item_id, end_ms))

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


def _member_in(head: str, key: str) -> str | None:
    """The string member ``key`` in ``head``, a top-level stretch of compact JSON without ``{``
    or ``[``; None when absent or escaped (then the general path decides)."""
    i = head.find(f'"{key}":"')
    if i < 0:
        return None
    i += len(key) + 4
    k = head.find('"', i)
    if k < 0:
        return None
    value = head[i:k]
    return None if "\\" in value else value


def _ids(ev: Event, text: str) -> tuple[str, str]:
    """(item_id, response_id) of an output audio delta, from the text when certain."""
    span = string_span(text, "item_id")
    item_id = text[span[0] : span[1]] if span is not None else _member(ev, "item_id")
    span = string_span(text, "response_id")
    return item_id, text[span[0] : span[1]] if span is not None else _member(ev, "response_id")


def _value(ev: Event, key: str) -> Any:
    try:
        return ev.payload().get(key)
    except orjson.JSONDecodeError:
        return None


def _member(ev: Event, key: str) -> str:
    v = _value(ev, key)
    return v if isinstance(v, str) else ""
