"""Per-session metering: audio seconds from bytes, heard seconds, tokens and USD. Sans-I/O.

Rules of this module:
- Audio is measured, not estimated: the decoded length of each base64 payload (computed from the
  string's length and padding, never decoded) divided by the negotiated format's byte rate.
  PCM16 24 kHz (GA ``audio/pcm``, beta ``pcm16``) is 48,000 B/s; G.711 μ-law/A-law (``audio/pcmu``,
  ``audio/pcma``, ``g711_ulaw``, ``g711_alaw``) is 8,000 B/s. Seconds are exact ``Fraction``s.
- The format is what upstream says it is (``session.created`` / ``session.updated``, both
  dialects), not what the client asked for. Before the first of those, PCM16 is assumed (the
  API's default).
- Heard output = generated output audio per item, cut at ``conversation.item.truncate.audio_end_ms``.
- Hot path: an output audio delta is scanned in its wire text (no JSON parse); input appends use
  the payload the core already parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from relay.budget.units import TICKS_PER_SECOND

PCM16_BPS = 48_000
G711_BPS = 8_000
_GA_FORMATS = {"audio/pcmu": G711_BPS, "audio/pcma": G711_BPS}
_BETA_FORMATS = {"pcm16": PCM16_BPS, "g711_ulaw": G711_BPS, "g711_alaw": G711_BPS}


def b64_decoded_len(s: str) -> int:
    """Bytes that base64 text ``s`` decodes to (standard alphabet, no whitespace)."""
    n = len(s)
    if n == 0:
        return 0
    if n % 4:
        return n * 3 // 4  # unpadded: 2 chars carry 1 byte, 3 chars carry 2
    pad = 2 if s.endswith("==") else 1 if s[-1] == "=" else 0
    return n // 4 * 3 - pad


def b64_len_in(text: str, start: int, end: int) -> int:
    """``b64_decoded_len(text[start:end])`` without copying the slice."""
    n = end - start
    if n <= 0:
        return 0
    if n % 4:
        return n * 3 // 4
    pad = 0
    if text[end - 1] == "=":
        pad = 2 if text[end - 2] == "=" else 1
    return n // 4 * 3 - pad


def format_bps(fmt: Any) -> int | None:
    """Bytes per second of an audio format in either dialect; None if not recognised."""
    if isinstance(fmt, str):
        return _BETA_FORMATS.get(fmt) or _GA_FORMATS.get(fmt) or (PCM16_BPS if fmt == "audio/pcm" else None)
    if isinstance(fmt, Mapping):
        kind = fmt.get("type")
        if kind == "audio/pcm":
            rate = fmt.get("rate", 24_000)
            return (
                2 * rate if isinstance(rate, int) and not isinstance(rate, bool) and rate > 0 else PCM16_BPS
            )
        if isinstance(kind, str):
            return _GA_FORMATS.get(kind)
    return None


def _ticks_per_byte(bps: int) -> int:
    # Exact for 48,000 and 8,000 B/s; a rate that does not divide 48,000 rounds up (over-meters).
    return -(-TICKS_PER_SECOND // bps)


class SessionAudioConfig:
    """What upstream negotiated: formats, output cap and transcription model (both dialects)."""

    __slots__ = ("in_bps", "out_bps", "max_output_tokens", "transcription_model", "instructions_chars")

    def __init__(self) -> None:
        self.in_bps = PCM16_BPS
        self.out_bps = PCM16_BPS
        self.max_output_tokens: int | None = None
        """None: the model's maximum (also for ``"inf"``)."""
        self.transcription_model = ""
        self.instructions_chars = 0

    def apply(self, session: Mapping[str, Any]) -> None:
        """Take the effective config from a ``session.created``/``session.updated`` payload."""
        audio = session.get("audio")
        if isinstance(audio, Mapping):  # GA
            inp, out = audio.get("input"), audio.get("output")
            if isinstance(inp, Mapping):
                self.in_bps = format_bps(inp.get("format")) or self.in_bps
                tr = inp.get("transcription")
                if isinstance(tr, Mapping) and isinstance(tr.get("model"), str):
                    self.transcription_model = tr["model"]
            if isinstance(out, Mapping):
                self.out_bps = format_bps(out.get("format")) or self.out_bps
        if "input_audio_format" in session:  # beta
            self.in_bps = format_bps(session.get("input_audio_format")) or self.in_bps
        if "output_audio_format" in session:
            self.out_bps = format_bps(session.get("output_audio_format")) or self.out_bps
        tr = session.get("input_audio_transcription")
        if isinstance(tr, Mapping) and isinstance(tr.get("model"), str):
            self.transcription_model = tr["model"]
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in session:
                self.max_output_tokens = output_cap(session.get(key))
        instructions = session.get("instructions")
        if isinstance(instructions, str):
            self.instructions_chars = len(instructions)


def output_cap(value: Any) -> int | None:
    """A ``max_output_tokens`` value as an int, None for ``"inf"`` or anything unusable."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


class Meter:
    """Audio counts for one session, in exact units (bytes per byte rate, ticks for the ledger)."""

    __slots__ = (
        "config",
        "in_bytes",
        "out_bytes",
        "in_ticks",
        "out_ticks",
        "_item_ticks",
        "_cut",
        "_heard_done",
    )

    def __init__(self, config: SessionAudioConfig | None = None) -> None:
        self.config = config or SessionAudioConfig()
        self.in_bytes: dict[int, int] = {}
        """Decoded input bytes by byte rate."""
        self.out_bytes: dict[int, int] = {}
        self.in_ticks = 0
        self.out_ticks = 0
        self._item_ticks: dict[str, int] = {}
        self._cut: dict[str, int] = {}
        self._heard_done: set[str] = set()

    def add_input_bytes(self, nbytes: int) -> int:
        """Meter ``nbytes`` of client audio at the current input format; returns the ticks."""
        bps = self.config.in_bps
        self.in_bytes[bps] = self.in_bytes.get(bps, 0) + nbytes
        ticks = nbytes * _ticks_per_byte(bps)
        self.in_ticks += ticks
        return ticks

    def add_output_bytes(self, item_id: str, nbytes: int) -> int:
        bps = self.config.out_bps
        self.out_bytes[bps] = self.out_bytes.get(bps, 0) + nbytes
        ticks = nbytes * _ticks_per_byte(bps)
        self.out_ticks += ticks
        self._item_ticks[item_id] = self._item_ticks.get(item_id, 0) + ticks
        return ticks

    def truncate(self, item_id: str, audio_end_ms: int) -> int:
        """Cut an item's heard audio at ``audio_end_ms``; returns the item's heard ticks."""
        cut = max(0, audio_end_ms) * (TICKS_PER_SECOND // 1000)
        prev = self._cut.get(item_id)
        self._cut[item_id] = cut if prev is None else min(prev, cut)
        return self.heard_ticks_of(item_id)

    def heard_ticks_of(self, item_id: str) -> int:
        generated = self._item_ticks.get(item_id, 0)
        cut = self._cut.get(item_id)
        return generated if cut is None else min(generated, cut)

    def item_ticks(self, item_id: str) -> int:
        return self._item_ticks.get(item_id, 0)

    def finalize_heard(self, item_id: str) -> int:
        """Mark an item's heard audio as final (once); returns the ticks to count, else 0."""
        if item_id in self._heard_done:
            return 0
        self._heard_done.add(item_id)
        return self.heard_ticks_of(item_id)

    def unfinalized_items(self) -> list[str]:
        return [i for i in self._item_ticks if i not in self._heard_done]

    @property
    def heard_ticks(self) -> int:
        return sum(self.heard_ticks_of(i) for i in self._item_ticks)

    @property
    def input_seconds(self) -> Fraction:
        """Exactly Σ bytes / byte rate over the formats used."""
        return sum((Fraction(b, bps) for bps, b in self.in_bytes.items()), Fraction(0))

    @property
    def output_seconds(self) -> Fraction:
        return sum((Fraction(b, bps) for bps, b in self.out_bytes.items()), Fraction(0))

    @property
    def heard_seconds(self) -> Fraction:
        return Fraction(self.heard_ticks, TICKS_PER_SECOND)
