"""Speech for the simulator's replies: espeak-ng when installed, beeps otherwise.

Rules of this module:
- ``synthesize(text, voice, speed)`` returns 24 kHz mono PCM16. Results are cached (bounded), so a
  reply that repeats costs one synthesis.
- espeak-ng runs as a subprocess with ``--stdout``; its 22.05 kHz output is resampled here. When
  espeak-ng is missing or fails, ``tone_speech`` stands in: one 180 ms beep per word with 70 ms
  gaps, so the person listening hears that the fallback is active and VAD still sees "speech".
- ``source="tone"`` forces the fallback (benchmarks, tests that must not depend on espeak-ng).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from array import array
from functools import lru_cache

from relay.sim.audio import PCM_RATE, parse_wav, resample, to_bytes, to_samples

ESPEAK = "espeak-ng"
# A different espeak-ng variant per OpenAI voice so two voices sound different; unknown voices
# (custom ``{id: ...}`` voices included) get the default.
_VOICE_VARIANTS = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en-gb+m4",
    "coral": "en-us+f3",
    "echo": "en-us+m1",
    "sage": "en-gb+f2",
    "shimmer": "en-us+f4",
    "verse": "en-us+m5",
    "marin": "en-us+f1",
    "cedar": "en-us+m2",
}
_WORDS_PER_MINUTE = 175


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def espeak_pcm24k(text: str, voice: str = "alloy", speed: float = 1.0) -> bytes:
    """Speak ``text`` with espeak-ng; raises ``RuntimeError`` when espeak-ng is unusable."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian package: espeak-ng)")
    wpm = str(max(80, min(450, round(_WORDS_PER_MINUTE * speed))))
    variant = _VOICE_VARIANTS.get(voice, "en-us")
    proc = subprocess.run(  # noqa: S603 - fixed executable, text passed as one argv item
        [exe, "--stdout", "-v", variant, "-s", wpm, "--", text],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
    rate, channels, data = parse_wav(proc.stdout)
    samples = to_samples(data)
    if channels > 1:
        samples = array("h", samples[::channels])
    return to_bytes(resample(samples, rate, PCM_RATE))


def tone_speech(text: str, speed: float = 1.0) -> bytes:
    """The fallback voice: a beep per word (at least one), 24 kHz PCM16."""
    words = max(1, len(text.split()))
    beep = int(PCM_RATE * 0.18 / speed)
    gap = int(PCM_RATE * 0.07 / speed)
    one = array("h", bytes(2 * (beep + gap)))
    for i in range(beep):
        # 330 Hz with a short fade in/out so the beeps do not click.
        env = min(1.0, i / 240, (beep - i) / 240)
        one[i] = int(9000 * env * math.sin(2 * math.pi * 330 * i / PCM_RATE))
    return to_bytes(one) * words


@lru_cache(maxsize=256)
def synthesize(text: str, voice: str = "alloy", speed: float = 1.0, source: str = "espeak") -> bytes:
    """24 kHz PCM16 speech for ``text`` (cached). Falls back to beeps if espeak-ng fails."""
    if source == "espeak" and text.strip():
        try:
            return espeak_pcm24k(text, voice, speed)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired):
            pass
    return tone_speech(text, speed)
