"""Transcripts of a recording: ``transcript.txt`` and WebVTT captions, from the event log (sans-I/O).

Rules of this module:
- Caller turns come from ``conversation.item.input_audio_transcription.completed``; their times
  from ``input_audio_buffer.speech_started`` / ``speech_stopped`` (``audio_start_ms`` /
  ``audio_end_ms`` count the caller's audio, which the log's caller references map onto the
  recording's timeline), else from when the transcript arrived. Typed user messages
  (``conversation.item.create`` with ``input_text``) appear at the time they were sent.
- Assistant turns come from ``response.output_audio_transcript.done`` (beta
  ``response.audio_transcript.done``) or text responses, timed by where the item's audio lies on
  the right channel; a cut item ends at its cut and is marked ``[interrupted]``.
- Times are seconds on the recording's timeline (0 = session start), as in ``audio.wav``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

CALLER = "Caller"
ASSISTANT = "Assistant"
_TRANSCRIPT_DONE = ("response.output_audio_transcript.done", "response.audio_transcript.done")
_TEXT_DONE = ("response.output_text.done", "response.text.done")


@dataclass(slots=True)
class Cue:
    start: float
    end: float
    speaker: str
    text: str
    interrupted: bool = False


class _CallerClock:
    """Maps "ms of caller audio sent" to seconds on the recording's timeline."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.sent: list[int] = []
        self.offsets: list[int] = []
        self.total = 0

    def add(self, offset: int, duration: int) -> None:
        self.sent.append(self.total)
        self.offsets.append(offset)
        self.total += duration

    def at(self, audio_ms: int) -> float | None:
        if not self.sent:
            return None
        frames = audio_ms * self.rate // 1000
        i = max(0, bisect.bisect_right(self.sent, frames) - 1)
        return (self.offsets[i] + frames - self.sent[i]) / self.rate


def cues(lines: list[dict[str, Any]], rate: int) -> list[Cue]:
    clock = _CallerClock(rate)
    speech: dict[str, list[float | None]] = {}
    assistant_span: dict[str, list[int]] = {}
    cut: dict[str, int] = {}
    out: list[Cue] = []
    pending: list[tuple[str, str, float]] = []
    assistant_text: list[tuple[str, str, float]] = []
    for line in lines:
        ev = line.get("event")
        if not isinstance(ev, dict):
            continue
        t = line.get("type")
        t_s = int(line.get("t_us", 0)) / 1e6
        if line.get("dir") == "relay":
            if t == "recording.cut" and isinstance(ev.get("item_id"), str):
                cut[ev["item_id"]] = min(int(ev.get("frame", 0)), cut.get(ev["item_id"], 1 << 62))
            continue
        if t == "input_audio_buffer.append" and isinstance(ev.get("audio"), dict):
            ref = ev["audio"]
            clock.add(int(ref.get("offset", 0)), int(ref.get("duration", 0)))
        elif t in ("response.output_audio.delta", "response.audio.delta") and isinstance(
            ev.get("delta"), dict
        ):
            ref = ev["delta"]
            span = assistant_span.setdefault(str(ev.get("item_id", "")), [1 << 62, 0])
            span[0] = min(span[0], int(ref.get("offset", 0)))
            span[1] = max(span[1], int(ref.get("offset", 0)) + int(ref.get("duration", 0)))
        elif t == "input_audio_buffer.speech_started":
            speech.setdefault(str(ev.get("item_id", "")), [None, None])[0] = clock.at(
                int(ev.get("audio_start_ms", 0))
            )
        elif t == "input_audio_buffer.speech_stopped":
            speech.setdefault(str(ev.get("item_id", "")), [None, None])[1] = clock.at(
                int(ev.get("audio_end_ms", 0))
            )
        elif t == "conversation.item.input_audio_transcription.completed":
            pending.append((str(ev.get("item_id", "")), str(ev.get("transcript", "")), t_s))
        elif t in _TRANSCRIPT_DONE:
            assistant_text.append((str(ev.get("item_id", "")), str(ev.get("transcript", "")), t_s))
        elif t in _TEXT_DONE:
            assistant_text.append((str(ev.get("item_id", "")), str(ev.get("text", "")), t_s))
        elif t == "conversation.item.create" and line.get("dir") == "client_to_upstream":
            typed = _typed_text(ev.get("item"))
            if typed:
                out.append(Cue(t_s, t_s + 2.0, CALLER, typed))
    for item_id, words, t_s in pending:
        if not words.strip():
            continue
        began, ended = speech.get(item_id, [None, None])
        end = ended if ended is not None else t_s
        start = began if began is not None else max(0.0, end - 2.0)
        out.append(Cue(start, max(end, start + 0.1), CALLER, words.strip()))
    for item_id, words, t_s in assistant_text:
        if not words.strip():
            continue
        lo, hi = assistant_span.get(item_id, (0, 0))
        interrupted = item_id in cut
        if lo < hi:
            stop = min(hi, cut.get(item_id, hi))
            out.append(Cue(lo / rate, max(stop, lo) / rate, ASSISTANT, words.strip(), interrupted))
        else:
            out.append(Cue(t_s, t_s + 2.0, ASSISTANT, words.strip(), interrupted))
    out.sort(key=lambda c: (c.start, c.end))
    return out


def _typed_text(item: Any) -> str:
    if not isinstance(item, dict) or item.get("role") != "user":
        return ""
    parts = item.get("content")
    if not isinstance(parts, list):
        return ""
    return " ".join(
        str(p.get("text", "")) for p in parts if isinstance(p, dict) and p.get("type") == "input_text"
    )


def stamp(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def text(cues_: list[Cue]) -> str:
    lines = []
    for c in cues_:
        mark = " [interrupted]" if c.interrupted else ""
        lines.append(f"[{stamp(c.start)} --> {stamp(c.end)}] {c.speaker}: {c.text}{mark}")
    return "\n".join(lines) + ("\n" if lines else "")


def _vtt_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def webvtt(cues_: list[Cue]) -> str:
    out = ["WEBVTT", ""]
    for i, c in enumerate(cues_, 1):
        mark = " [interrupted]" if c.interrupted else ""
        out += [
            str(i),
            f"{stamp(c.start)} --> {stamp(c.end)}",
            f"<v {c.speaker}>{_vtt_escape(c.text)}{mark}",
            "",
        ]
    return "\n".join(out)
