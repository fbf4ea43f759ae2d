"""Where each piece of audio goes on the recording's stereo timeline (sans-I/O).

The timeline is the session's wall clock at the WAV's sample rate: frame ``f`` is ``f / rate``
seconds after the session started. Calls return write instructions (``Write``, ``Fill``) that the
spool carries out; nothing here touches files. ``lay_caller`` / ``lay_assistant`` are the same
placement without instruction objects (the recorder's hot path); ``caller`` / ``assistant`` are
built on them, so there is one rule for where audio goes.

Rules of this module:
- Left (caller): each ``input_audio_buffer.append`` is laid where the previous one ended, so a
  client streaming in real time gets a left channel byte-identical to what it sent. Silence is
  inserted only when the chunk's ideal start (arrival minus its own duration) lies more than
  ``tolerance`` after the end of the audio already laid: the client really paused (or reached the
  relay that late: the relay cannot tell). A client sending faster than real time pushes the left
  channel ahead of the clock; nothing of it is ever dropped. ``caller_end`` lets the writer log
  where silence went between two pieces of caller audio (``recording.pause``).
- Right (assistant, as the caller heard it): the first delta of an item starts when it reached the
  client (or when earlier assistant audio finishes playing); later deltas of the same item queue
  back to back (they arrive faster than real time). A ``conversation.item.truncate`` cuts the item
  at ``audio_end_ms`` of its own audio. A cancelled ``response.done`` cuts the response's items at
  the moment of cancellation, lazily: a truncate of the item that follows (the usual barge-in
  sequence) replaces it, because the client knows what it played. Cut audio becomes silence.
- Sealing: frames before ``sealed`` are final and belong to the uploader. ``seal(now)`` moves it to
  ``now - holdback`` (filling silence where a channel has nothing), so a truncate that arrives up to
  ``holdback`` late can still cut. A cut that falls before ``sealed`` is counted as late and left.
- Memory: a fixed number of recent items (``MAX_ITEMS``) with a few segments each; no audio bytes
  are held here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

LEFT = 0
RIGHT = 1
TRACKS = ("caller", "assistant")
MAX_ITEMS = 64


class Write(NamedTuple):
    channel: int
    frame: int
    data: bytes


class Fill(NamedTuple):
    """Silence on ``channel`` over ``[frame, frame + frames)``."""

    channel: int
    frame: int
    frames: int


Op = Write | Fill


class Placement(NamedTuple):
    """Where a chunk went: ``frames`` frames from ``frame`` on ``channel``."""

    channel: int
    frame: int
    frames: int


class Cut(NamedTuple):
    """A truncate / cancel applied: what was silenced and what could not be (already sealed)."""

    item_id: str
    frame: int
    frames: int
    late_frames: int
    reason: str


@dataclass(slots=True)
class _Item:
    response_id: str
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    """(offset in the item's own audio, start frame on the timeline, frames)."""
    frames: int = 0


class Timeline:
    def __init__(
        self, rate: int, sample_bytes: int, *, tolerance_ms: int = 200, holdback_ms: int = 3000
    ) -> None:
        self.rate = rate
        self.sample_bytes = sample_bytes
        self.tolerance = tolerance_ms * rate // 1000
        self.holdback = holdback_ms * rate // 1000
        self.left_end = 0
        """Frames final on the left channel (laid audio or silence)."""
        self.caller_end = 0
        """Where the caller's last audio ended (``left_end`` without the silence sealed after it)."""
        self.right_end = 0
        """Frames written on the right channel (audio or silence)."""
        self.right_cursor = 0
        """Where the next assistant audio would start playing if it arrived now."""
        self.sealed = 0
        self.caller_frames = 0
        self.assistant_frames = 0
        self.cut_frames = 0
        self.late_cut_frames = 0
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._pending: dict[str, int] = {}
        """Cancellation cuts not applied yet: item id → frame."""
        self._cuts: list[Cut] = []
        self._last_item = ""

    def frame_at(self, t_us: int) -> int:
        return max(0, t_us * self.rate // 1_000_000)

    # Caller -------------------------------------------------------------------------------------

    def caller(self, data: bytes, t_us: int) -> tuple[Placement, list[Op]]:
        """Lay a caller chunk (already in the WAV's encoding) that reached the relay at ``t_us``."""
        n = len(data) // self.sample_bytes
        data = data[: n * self.sample_bytes]  # a torn trailing sample is not laid
        prev = self.left_end
        start = self.lay_caller(n, t_us)
        ops: list[Op] = []
        if start > prev:
            ops.append(Fill(LEFT, prev, start - prev))
        if n:
            ops.append(Write(LEFT, start, data))
        return Placement(LEFT, start, n), ops

    def lay_caller(self, n: int, t_us: int) -> int:
        """Place ``n`` caller frames that reached the relay at ``t_us``; returns the start frame.

        The lean form of ``caller`` for the recorder's hot path (no instruction objects): the
        audio goes at ``[start, start + n)``, and silence at ``[left_end, start)`` when the start
        is later than ``left_end`` as it was before the call.
        """
        ideal = max(0, t_us * self.rate // 1_000_000) - n
        end = self.left_end
        start = ideal if ideal > end + self.tolerance else end
        self.left_end = self.caller_end = start + n
        self.caller_frames += n
        return start

    # Assistant ----------------------------------------------------------------------------------

    def assistant(self, data: bytes, t_us: int, item_id: str, response_id: str) -> tuple[Placement, list[Op]]:
        """Lay an output audio delta that reached the client at ``t_us``."""
        n = len(data) // self.sample_bytes
        data = data[: n * self.sample_bytes]
        ops = self._apply_pending(None)  # new audio: earlier cancellations are final now
        prev = self.right_end
        start = self.lay_assistant(n, t_us, item_id, response_id)
        if start > prev:
            ops.append(Fill(RIGHT, prev, start - prev))
        if n:
            ops.append(Write(RIGHT, start, data))
        return Placement(RIGHT, start, n), ops

    @property
    def cuts_pending(self) -> bool:
        """True while a cancellation cut waits to be applied (then use ``assistant``)."""
        return bool(self._pending)

    def lay_assistant(self, n: int, t_us: int, item_id: str, response_id: str) -> int:
        """Place ``n`` frames of output audio that reached the client at ``t_us``; returns the start.

        The lean form of ``assistant`` for the hot path, valid only while ``cuts_pending`` is
        False: the audio goes at ``[start, start + n)``, and silence at ``[right_end, start)``
        when the start is later than ``right_end`` as it was before the call.
        """
        arrival = max(t_us * self.rate // 1_000_000, 0, self.sealed)
        item = self._items.get(item_id)
        if item is None:
            item = self._remember(item_id, response_id)
        cursor = self.right_cursor
        if item_id == self._last_item and arrival <= cursor + self.tolerance:
            start = cursor if cursor > self.sealed else self.sealed
        else:
            start = cursor if cursor > arrival else arrival
        end = start + n
        if n:
            item.segments.append((item.frames, start, n))
            item.frames += n
        if end > self.right_end:
            self.right_end = end
        self.right_cursor = end
        self._last_item = item_id
        self.assistant_frames += n
        return start

    def _remember(self, item_id: str, response_id: str) -> _Item:
        item = self._items[item_id] = _Item(response_id)
        while len(self._items) > MAX_ITEMS:
            old, _ = self._items.popitem(last=False)
            self._pending.pop(old, None)
        return item

    def truncate(self, item_id: str, audio_end_ms: int) -> list[Op]:
        """The client stopped playing ``item_id`` after ``audio_end_ms`` of its audio.

        The client knows what it played: this replaces a pending cancellation cut of the item.
        """
        item = self._items.get(item_id)
        if item is None:
            return []
        self._pending.pop(item_id, None)
        offset = max(0, audio_end_ms) * self.rate // 1000
        for item_off, start, n in item.segments:
            if item_off <= offset < item_off + n:
                return self._cut(item_id, item, start + offset - item_off, "truncate")
        return []

    def cancel(self, response_id: str, t_us: int) -> None:
        """``response.done`` with status ``cancelled`` reached the client at ``t_us``.

        The response's items are cut at that moment, lazily: a truncate of the item that follows
        (the usual case) replaces the cut; new assistant audio, sealing or the end apply it.
        """
        frame = self.frame_at(t_us)
        for item_id, item in self._items.items():
            if item.response_id == response_id and any(s + n > frame for _, s, n in item.segments):
                self._pending[item_id] = min(frame, self._pending.get(item_id, frame))
        if self.right_cursor > frame:
            self.right_cursor = max(frame, self._queue_end())

    @property
    def has_cuts(self) -> bool:
        return bool(self._cuts)

    def take_cuts(self) -> list[Cut]:
        """The cuts applied since the last call (for the event log)."""
        cuts, self._cuts = self._cuts, []
        return cuts

    def _apply_pending(self, below: int | None) -> list[Op]:
        ops: list[Op] = []
        if self._pending:
            for item_id, frame in list(self._pending.items()):
                if below is None or frame < below:
                    del self._pending[item_id]
                    ops += self._cut(item_id, self._items[item_id], frame, "cancel")
        return ops

    def _queue_end(self) -> int:
        end = 0
        for item_id, item in self._items.items():
            limit = self._pending.get(item_id)
            for _, s, n in item.segments:
                end = max(end, s + n if limit is None else min(s + n, limit))
        return end

    def _cut(self, item_id: str, item: _Item, frame: int, reason: str) -> list[Op]:
        ops: list[Op] = []
        kept: list[tuple[int, int, int]] = []
        cut = late = 0
        for item_off, start, n in item.segments:
            end = start + n
            if end <= frame:
                kept.append((item_off, start, n))
                continue
            lo = max(start, frame)
            if lo > start:
                kept.append((item_off, start, lo - start))
            cut += end - lo
            open_lo = min(max(lo, self.sealed), end)
            late += open_lo - lo
            if end > open_lo:
                ops.append(Fill(RIGHT, open_lo, end - open_lo))
        if not cut:
            return []
        item.segments = kept
        item.frames = sum(n for _, _, n in kept)
        self.cut_frames += cut
        self.late_cut_frames += late
        if self.right_cursor > frame:
            self.right_cursor = max(frame, self._queue_end())
        self._cuts.append(Cut(item_id, frame, cut, late, reason))
        return ops

    # Sealing ------------------------------------------------------------------------------------

    def seal(self, now_frame: int) -> list[Op]:
        """Make everything before ``now_frame - holdback`` final (both channels filled)."""
        return self._seal_to(now_frame - self.holdback)

    def _seal_to(self, target: int) -> list[Op]:
        if target <= self.sealed:
            return []
        ops = self._apply_pending(target)
        if self.left_end < target:
            ops.append(Fill(LEFT, self.left_end, target - self.left_end))
            self.left_end = target
        if self.right_end < target:
            ops.append(Fill(RIGHT, self.right_end, target - self.right_end))
            self.right_end = target
        self.sealed = target
        return ops

    def finish(self, end_frame: int) -> tuple[int, list[Op]]:
        """Close the timeline at the session's end; returns (total frames, last instructions).

        The WAV lasts as long as the session, or longer if the caller sent audio ahead of the clock
        (caller audio is never dropped). Assistant audio scheduled after the end was never heard.
        """
        ops = self._apply_pending(None)
        total = max(end_frame, self.left_end, self.sealed)
        for item in self._items.values():
            for _, start, n in item.segments:
                if start + n > total:
                    self.cut_frames += start + n - max(start, total)
        if self.right_end > total:
            self.right_end = total
        ops += self._seal_to(total)
        return total, ops

    @property
    def heard_frames(self) -> int:
        return self.assistant_frames - self.cut_frames
