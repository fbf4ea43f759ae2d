"""Test audio: real speech from espeak-ng, silence, chunking, G.711 variants.

Every helper returns raw bytes in a Realtime wire format: PCM16 is 24 kHz mono little-endian,
G.711 (μ-law / A-law) is 8 kHz, one byte a sample. Speech needs espeak-ng; a missing espeak-ng
fails the test with the package name instead of silently using something else.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from functools import lru_cache

from relay.sim import audio as _audio
from relay.sim import tts as _tts

PCM16_BYTES_PER_MS = 48
G711_BYTES_PER_MS = 8


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng is not installed: the tests need real speech (Debian: apt-get install espeak-ng sox)"
        )


@lru_cache(maxsize=64)
def speech_pcm16(text: str, voice: str = "alloy", speed: float = 1.0) -> bytes:
    """``text`` spoken by espeak-ng as 24 kHz mono PCM16 (cached)."""
    require_espeak()
    return _tts.espeak_pcm24k(text, voice, speed)


def silence_pcm16(ms: int) -> bytes:
    return bytes(PCM16_BYTES_PER_MS * ms)


def silence_g711(ms: int, law: str = "ulaw") -> bytes:
    return (b"\xff" if law == "ulaw" else b"\xd5") * (G711_BYTES_PER_MS * ms)


def pcm16_to_ulaw(pcm24k: bytes) -> bytes:
    """24 kHz PCM16 → 8 kHz μ-law."""
    return _audio.encode_pcm24k(pcm24k, _audio.ULAW)


def pcm16_to_alaw(pcm24k: bytes) -> bytes:
    """24 kHz PCM16 → 8 kHz A-law."""
    return _audio.encode_pcm24k(pcm24k, _audio.ALAW)


def speech_ulaw(text: str) -> bytes:
    return pcm16_to_ulaw(speech_pcm16(text))


def speech_alaw(text: str) -> bytes:
    return pcm16_to_alaw(speech_pcm16(text))


def chunks(data: bytes, ms: int = 20, bytes_per_ms: int = PCM16_BYTES_PER_MS) -> Iterator[bytes]:
    """Cut audio into ``ms`` pieces (the last one may be shorter); G.711: ``bytes_per_ms=8``."""
    size = ms * bytes_per_ms
    for i in range(0, len(data), size):
        yield data[i : i + size]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def append_frames(data: bytes, ms: int = 20, bytes_per_ms: int = PCM16_BYTES_PER_MS) -> Iterator[str]:
    """``input_audio_buffer.append`` JSON frames carrying ``data`` in ``ms`` pieces."""
    for piece in chunks(data, ms, bytes_per_ms):
        yield json.dumps({"type": "input_audio_buffer.append", "audio": b64(piece)})


def duration_ms(data: bytes, bytes_per_ms: int = PCM16_BYTES_PER_MS) -> float:
    return len(data) / bytes_per_ms


def utterance_pcm16(text: str, lead_ms: int = 300, tail_ms: int = 800) -> bytes:
    """Silence, ``text`` spoken, silence: one turn that server VAD detects start and stop of."""
    return silence_pcm16(lead_ms) + speech_pcm16(text) + silence_pcm16(tail_ms)
