"""Input audio of a session: the buffer, server VAD, commits and their item events.

Rules of this module:
- A mixin of ``SimSession`` (it uses the session's config, items and event helpers); split out
  only to keep the session module readable.
- Positions are milliseconds of audio received in the session: ``received_ms`` counts every
  appended byte; ``buffer`` holds wire bytes from ``buf_start_ms`` on. VAD positions are
  relative to ``_vad_origin_ms`` (reset when the input format changes).
- With VAD on and nobody speaking, the buffer keeps only what a future speech start can reach
  back to (``prefix_padding_ms`` + 20 ms), so silence never accumulates.
- The committed item holds exactly the audio from ``audio_start_ms`` to ``audio_end_ms``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.sim import sessionconfig as sc
from relay.sim.audio import AudioFormat, decode_to_samples
from relay.sim.items import Item, Part, new_id
from relay.sim.parse import ClientError
from relay.sim.usage import input_audio_tokens, transcription_usage
from relay.sim.vad import Vad

if TYPE_CHECKING:
    from relay.sim.response import ResponseRun

MAX_APPEND_CHARS = 15 * 1024 * 1024
MIN_COMMIT_MS = 100
Event = dict[str, Any]


class InputAudioMixin:
    # Provided by SimSession.
    cfg: dict[str, Any]
    kind: str
    active: ResponseRun | None
    transcribe: Callable[[int], str]
    buffer: bytearray
    buf_start_ms: int
    received_ms: float
    vad: Vad
    _vad_origin_ms: int
    _speech_item: str | None
    _speech_start_ms: int

    def ev(self, etype: str, **fields: Any) -> Event:
        raise NotImplementedError

    def insert_item(self, item: Item, previous_item_id: str | None) -> str | None:
        raise NotImplementedError

    def _item_events(self, item: Item, prev: str | None) -> list[Event]:
        raise NotImplementedError

    def _start_response(self, resp: dict[str, Any]) -> list[Event]:
        raise NotImplementedError

    @property
    def in_format(self) -> AudioFormat:
        return sc.input_format(self.cfg)

    def _turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.cfg["audio"]["input"]["turn_detection"]
        return td

    def _vad_params(self) -> tuple[float, int, int]:
        td = self._turn_detection() or {}
        if td.get("type") == "semantic_vad":
            return 0.5, 300, sc.SEMANTIC_SILENCE_MS.get(td.get("eagerness") or "auto", 500)
        threshold = td.get("threshold")
        prefix = td.get("prefix_padding_ms")
        silence = td.get("silence_duration_ms")
        return (
            0.5 if threshold is None else float(threshold),
            300 if prefix is None else int(prefix),
            200 if silence is None else int(silence),
        )

    def _new_vad(self) -> Vad:
        return Vad(self.in_format.rate, *self._vad_params())

    def _configure_vad(self) -> None:
        self.vad.configure(*self._vad_params())

    # --- input audio ----------------------------------------------------------------------------

    def _append(self, data: dict[str, Any]) -> list[Event]:
        audio = data.get("audio")
        if not isinstance(audio, str):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        if len(audio) > MAX_APPEND_CHARS:
            raise ClientError(
                "string_above_max_length",
                f"Invalid 'audio': string too long. Expected a string with maximum length {MAX_APPEND_CHARS}, "
                f"but got a string with length {len(audio)} instead.",
                "audio",
            )
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio data.", "audio"
            ) from None
        fmt = self.in_format
        self.buffer.extend(raw)
        self.received_ms += fmt.duration_ms(len(raw))
        td = self._turn_detection()
        if td is None:
            return []
        events: list[Event] = []
        self.vad.floor_ms = self.buf_start_ms - self._vad_origin_ms
        for ve in self.vad.feed(decode_to_samples(raw, fmt)):
            ms = ve.ms + self._vad_origin_ms
            if ve.kind == "start":
                events += self._speech_started(ms, td)
            else:
                events += self._speech_stopped(ms, td)
        if not self.vad.speaking:
            # Keep only what a future speech start can reach back to (prefix padding).
            keep_from = int(self.received_ms) - self.vad.prefix_padding_ms - 20
            if keep_from > self.buf_start_ms:
                # Whole milliseconds only (48 or 8 bytes each), so positions never drift.
                per_ms = int(fmt.bytes_per_ms)
                cut_ms = min(keep_from - self.buf_start_ms, len(self.buffer) // per_ms)
                del self.buffer[: cut_ms * per_ms]
                self.buf_start_ms += cut_ms
        return events

    def _speech_started(self, ms: int, td: dict[str, Any]) -> list[Event]:
        self._speech_item = new_id("item_")
        self._speech_start_ms = ms
        events = [self.ev("input_audio_buffer.speech_started", audio_start_ms=ms, item_id=self._speech_item)]
        if self.active is not None and td.get("interrupt_response", True) and self.active.p.in_conversation:
            events += self.active.cancel("turn_detected")
        return events

    def _speech_stopped(self, ms: int, td: dict[str, Any]) -> list[Event]:
        item_id = self._speech_item or new_id("item_")
        self._speech_item = None
        events = [self.ev("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=item_id)]
        fmt = self.in_format
        lo = max(0, int((self._speech_start_ms - self.buf_start_ms) * fmt.bytes_per_ms))
        hi = min(len(self.buffer), int((ms - self.buf_start_ms) * fmt.bytes_per_ms))
        audio = bytes(self.buffer[lo:hi])
        del self.buffer[:hi]
        self.buf_start_ms = ms
        events += self._commit_audio(item_id, audio)
        if td.get("create_response", True) and self.active is None and self.kind == "realtime":
            events += self._start_response({})
        return events

    def _commit(self, data: dict[str, Any]) -> list[Event]:
        fmt = self.in_format
        ms = fmt.duration_ms(len(self.buffer))
        if ms < MIN_COMMIT_MS:
            raise ClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {ms:.2f}ms of audio.",
            )
        audio = bytes(self.buffer)
        self.buffer.clear()
        self.buf_start_ms = int(self.received_ms)
        self.vad.reset_speech()
        item_id = self._speech_item or new_id("item_")
        self._speech_item = None
        return self._commit_audio(item_id, audio)

    def _commit_audio(self, item_id: str, audio: bytes) -> list[Event]:
        """committed, the item events, then transcription events when configured."""
        fmt = self.in_format
        duration = round(fmt.duration_ms(len(audio)))
        part = Part("input_audio", transcript=None, audio=bytearray(audio))
        part.bytes_per_second = int(fmt.bytes_per_ms * 1000)
        item = Item(item_id, "message", role="user", content=[part])
        item.heard = self.transcribe(duration)
        prev = self.insert_item(item, None)
        events = [self.ev("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)]
        events += self._item_events(item, prev)
        transcription = self.cfg["audio"]["input"]["transcription"]
        if transcription is not None:
            text = item.heard or ""
            part.transcript = text
            events.append(
                self.ev(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item_id,
                    content_index=0,
                    delta=text,
                )
            )
            usage = transcription_usage(input_audio_tokens(len(audio), part.bytes_per_second), text)
            events.append(
                self.ev(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=text,
                    usage=usage,
                )
            )
        return events

    def _clear(self, data: dict[str, Any]) -> list[Event]:
        self.buffer.clear()
        self.buf_start_ms = int(self.received_ms)
        self.vad.reset_speech()
        self._speech_item = None
        return [self.ev("input_audio_buffer.cleared")]
