"""Hold-back redaction of streamed text for the recording.

A value split across deltas (``"my card is 4111 11"`` + ``"11 1111 1111"``) is invisible to a
per-delta scan. For the recording, each stream (one per item, content part and kind) keeps its
delta events queued until the text after them is at least ``holdback`` characters long, then
releases them with the whole visible window scanned. Released events keep their ``seq`` and
``recv_ns``; only their ``delta`` text changes (possibly to ``""``), and a replacement such as
``[REDACTED:card]`` sits in the delta where the value starts.

Releases happen in batches, once ``2 × holdback`` characters are held, so each character is
scanned a few times in all rather than once per later delta.

Guarantee: a value that a detector recognises and that is at most ``holdback`` characters long is
redacted in the recorded deltas however it is split; at the stream's ``.done`` (or the end of its
item, its response, or the session) everything held is released, fully scanned. Memory per
stream is bounded: past ``8 × holdback`` characters held, the oldest text is released anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.events import Event
from relay.policy.detectors import Match, Scanner


@dataclass(slots=True)
class HeldStream:
    response_id: str
    item_id: str
    queue: list[tuple[Event, int]] = field(default_factory=list)
    pending: str = ""
    context: str = ""


@dataclass(slots=True)
class Released:
    events: list[Event]
    labels: dict[str, int]


class Holdback:
    """The streams of one session for one redaction rule."""

    def __init__(self, scanner: Scanner, holdback: int) -> None:
        self.scanner = scanner
        self.holdback = holdback
        self.streams: dict[tuple[str, str, Any], HeldStream] = {}

    def push(self, key: tuple[str, str, Any], event: Event, delta: str) -> Released:
        payload = event.payload()
        s = self.streams.get(key)
        if s is None:
            s = HeldStream(str(payload.get("response_id") or ""), str(payload.get("item_id") or ""))
            self.streams[key] = s
        s.queue.append((event, len(delta)))
        s.pending += delta
        return self._release(s, final=False)

    def close(self, key: tuple[str, str, Any]) -> Released:
        s = self.streams.pop(key, None)
        return self._release(s, final=True) if s is not None else Released([], {})

    def close_where(self, *, item_id: str = "", response_id: str = "") -> Released:
        """Release every stream of an item (or of a response) that ended."""
        keys = [
            k
            for k, s in self.streams.items()
            if (item_id and s.item_id == item_id) or (response_id and s.response_id == response_id)
        ]
        return self._merge([self.close(k) for k in keys])

    def close_all(self) -> Released:
        return self._merge([self.close(k) for k in list(self.streams)])

    @staticmethod
    def _merge(parts: Sequence[Released]) -> Released:
        out = Released([], {})
        for p in parts:
            out.events.extend(p.events)
            for label, n in p.labels.items():
                out.labels[label] = out.labels.get(label, 0) + n
        return out

    def _release(self, s: HeldStream, *, final: bool) -> Released:
        if not final and len(s.pending) < 2 * self.holdback:
            # Scan in batches: waiting for two windows of text means each character is scanned
            # about three times in all, not once per delta that follows it.
            return Released([], {})
        off = len(s.context)
        window = s.context + s.pending
        matches = self.scanner.find(window)
        if final:
            cut = len(s.pending)
        else:
            limit = len(window) - self.holdback
            if len(s.pending) <= 8 * self.holdback:
                for m in matches:
                    if m.start < limit < m.end:
                        limit = m.start  # a value crossing the cut may still grow: hold it all
            cut = limit - off
            if cut <= 0:
                return Released([], {})
        local = [Match(m.start - off, m.end - off, m.label) for m in matches if m.end > off]
        count, released_len = self._boundary(s, cut, local)
        if count == 0:
            return Released([], {})
        out: list[Event] = []
        labels: dict[str, int] = {}
        pos = 0
        for event, n in s.queue[:count]:
            text = self._render(s.pending, pos, pos + n, local, labels)
            payload = dict(event.payload())
            payload["delta"] = text
            out.append(event if text == payload_delta(event) else event.with_payload(payload))
            pos += n
        s.context = (s.context + s.pending[:released_len])[-self.holdback :]
        s.pending = s.pending[released_len:]
        del s.queue[:count]
        return Released(out, labels)

    @staticmethod
    def _boundary(s: HeldStream, cut: int, matches: list[Match]) -> tuple[int, int]:
        """How many queued events to release (and their text length): whole events only, and
        never splitting a match between what goes out now and what stays held."""
        while True:
            count = 0
            released_len = 0
            for _, n in s.queue:
                if released_len + n > cut:
                    break
                released_len += n
                count += 1
            crossing = [m.start for m in matches if m.start < released_len < m.end]
            if not crossing or count == 0:
                return count, released_len
            cut = max(min(crossing), 0)

    def _render(self, pending: str, a: int, b: int, matches: list[Match], labels: dict[str, int]) -> str:
        """The segment ``pending[a:b]`` with matched characters removed; a match's replacement
        goes in the segment holding its first (not yet released) character."""
        pieces: list[str] = []
        pos = a
        for m in matches:
            if m.end <= a or m.start >= b:
                continue
            if m.start > pos:
                pieces.append(pending[pos : m.start])
            if max(m.start, 0) >= a:
                pieces.append(self.scanner.replace(m.label))
                labels[m.label] = labels.get(m.label, 0) + 1
            pos = max(pos, min(m.end, b))
        pieces.append(pending[pos:b])
        return "".join(pieces)


def payload_delta(event: Event) -> str:
    d = event.payload().get("delta")
    return d if isinstance(d, str) else ""
