"""Energy-based server VAD: decoded samples in, speech start/stop positions out.

Rules of this module:
- Pure and clock-free: every position is "milliseconds of audio received in this session",
  counted from samples, never from wall time.
- The audio is cut into 10 ms frames. A frame is *voiced* when its RMS reaches
  ``32768 * 10 ** ((-60 + 50 * threshold) / 20)``: threshold 0 → -60 dBFS, 0.5 → -35 dBFS,
  1 → -10 dBFS. Speech starts at the first voiced frame.
- ``start`` is reported as ``audio_start_ms = max(floor_ms, voiced_start - prefix_padding_ms)``
  (the audio sent to the model includes the padding, as OpenAI documents), where ``floor_ms``
  is the start of the current input buffer.
- Speech stops once ``silence_duration_ms`` of unvoiced frames follow the last voiced one;
  ``audio_end_ms = last_voiced_end + silence_duration_ms``, the position where the stop was
  detected (OpenAI's value also includes the silence).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

FRAME_MS = 10


@dataclass(frozen=True, slots=True)
class VadEvent:
    kind: str  # "start" or "stop"
    ms: int


def level_for(threshold: float) -> float:
    """The RMS (in 16-bit sample units) a frame needs to count as voiced."""
    t = min(1.0, max(0.0, threshold))
    return 32768.0 * 10 ** ((-60 + 50 * t) / 20)


class Vad:
    def __init__(
        self,
        rate: int,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 200,
    ) -> None:
        self.rate = rate
        self.frame = rate * FRAME_MS // 1000
        self.configure(threshold, prefix_padding_ms, silence_duration_ms)
        self.speaking = False
        self.floor_ms = 0
        self._pos_frames = 0  # whole frames consumed so far
        self._pending = array("h")
        self._last_voiced_end = 0  # in frames
        self._silence_frames = 0

    def configure(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        lvl = level_for(threshold)
        # Compared with the mean square of every second sample: half the work, same decision
        # for speech-band audio at these rates.
        self._min_power = lvl * lvl
        self.prefix_padding_ms = max(0, prefix_padding_ms)
        self.silence_frames_needed = max(1, -(-max(0, silence_duration_ms) // FRAME_MS))
        self.silence_duration_ms = self.silence_frames_needed * FRAME_MS

    @property
    def position_ms(self) -> int:
        """Milliseconds of audio consumed, partial frame included."""
        return self._pos_frames * FRAME_MS + len(self._pending) * 1000 // self.rate

    def reset_speech(self) -> None:
        """Forget an ongoing utterance (input buffer cleared or committed by hand)."""
        self.speaking = False
        self._silence_frames = 0

    def feed(self, samples: array[int]) -> list[VadEvent]:
        events: list[VadEvent] = []
        buf = self._pending
        buf.extend(samples)
        n = self.frame
        usable = len(buf) - len(buf) % n
        half = n // 2
        for off in range(0, usable, n):
            frame = buf[off : off + n : 2]
            power = sum(x * x for x in frame) / half
            self._pos_frames += 1
            if power >= self._min_power:
                self._silence_frames = 0
                self._last_voiced_end = self._pos_frames
                if not self.speaking:
                    self.speaking = True
                    voiced_start = (self._pos_frames - 1) * FRAME_MS
                    start = max(self.floor_ms, voiced_start - self.prefix_padding_ms)
                    events.append(VadEvent("start", start))
            elif self.speaking:
                self._silence_frames += 1
                if self._silence_frames >= self.silence_frames_needed:
                    self.speaking = False
                    self._silence_frames = 0
                    end = self._last_voiced_end * FRAME_MS + self.silence_duration_ms
                    events.append(VadEvent("stop", end))
        if usable:
            del buf[:usable]
        return events
