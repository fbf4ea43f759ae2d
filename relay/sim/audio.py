"""Audio formats of the Realtime API as pure functions: G.711 codecs, resampling, durations.

Rules of this module:
- No I/O. Samples are little-endian signed 16-bit mono (``array('h')`` or ``bytes``).
- The wire formats are ``pcm16`` (24 kHz, 2 bytes a sample) and G.711 μ-law / A-law (8 kHz,
  1 byte a sample). ``AudioFormat`` names them once for both dialects.
- G.711 follows ITU-T G.711 (segment/mantissa companding); the tables are built from the formula
  on first use, not copied from anywhere.
- Resampling is linear interpolation (upsampling) or block averaging (24 kHz → 8 kHz). It is
  meant for test speech, not for hi-fi.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from functools import cache

PCM_RATE = 24_000
G711_RATE = 8_000


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One wire format: ``kind`` is ``pcm16``, ``g711_ulaw`` or ``g711_alaw`` (beta names)."""

    kind: str

    @property
    def rate(self) -> int:
        return PCM_RATE if self.kind == "pcm16" else G711_RATE

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.kind == "pcm16" else 1

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * self.bytes_per_sample / 1000

    def duration_ms(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_ms

    def ga(self) -> dict[str, object]:
        """The GA ``audio.*.format`` object."""
        if self.kind == "pcm16":
            return {"type": "audio/pcm", "rate": PCM_RATE}
        return {"type": "audio/pcmu" if self.kind == "g711_ulaw" else "audio/pcma"}


PCM16 = AudioFormat("pcm16")
ULAW = AudioFormat("g711_ulaw")
ALAW = AudioFormat("g711_alaw")
BETA_FORMATS = {"pcm16": PCM16, "g711_ulaw": ULAW, "g711_alaw": ALAW}
GA_FORMATS = {"audio/pcm": PCM16, "audio/pcmu": ULAW, "audio/pcma": ALAW}


def to_samples(pcm: bytes) -> array[int]:
    a = array("h")
    a.frombytes(pcm[: len(pcm) - (len(pcm) & 1)])
    if sys.byteorder == "big":
        a.byteswap()
    return a


def to_bytes(samples: array[int]) -> bytes:
    if sys.byteorder == "big":
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


# --- G.711 ------------------------------------------------------------------------------------


def _ulaw_encode_one(sample: int) -> int:
    # 14-bit magnitude with the 0x84 bias folded in (33 after the shift), 8 segments.
    mask = 0xFF
    v = sample >> 2
    if v < 0:
        v = -v
        mask = 0x7F
    v = min(v, 8159) + 33
    seg = 0
    while seg < 8 and v > (0x40 << seg) - 1:
        seg += 1
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask


def _ulaw_decode_one(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def _alaw_encode_one(sample: int) -> int:
    v = sample >> 3
    if v >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        v = -v - 1
    seg = 0
    while seg < 8 and v > (0x20 << seg) - 1:
        seg += 1
    if seg >= 8:
        return 0x7F ^ mask
    a = seg << 4
    a |= ((v >> 1) if seg < 2 else (v >> seg)) & 0x0F
    return a ^ mask


def _alaw_decode_one(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


@cache
def _decode_table(kind: str) -> tuple[int, ...]:
    one = _ulaw_decode_one if kind == "g711_ulaw" else _alaw_decode_one
    return tuple(one(c) for c in range(256))


@cache
def _encode_table(kind: str) -> bytes:
    # Indexed by the unsigned 16-bit view of the sample: 64 KiB, built once per law.
    one = _ulaw_encode_one if kind == "g711_ulaw" else _alaw_encode_one
    return bytes(one(u - 65536 if u >= 32768 else u) for u in range(65536))


def g711_decode(data: bytes, kind: str) -> array[int]:
    """G.711 bytes to 16-bit samples (``kind`` is ``g711_ulaw`` or ``g711_alaw``)."""
    table = _decode_table(kind)
    return array("h", [table[b] for b in data])


def g711_encode(samples: array[int], kind: str) -> bytes:
    table = _encode_table(kind)
    return bytes([table[s & 0xFFFF] for s in samples])


def ulaw_encode(pcm: bytes) -> bytes:
    return g711_encode(to_samples(pcm), "g711_ulaw")


def ulaw_decode(data: bytes) -> bytes:
    return to_bytes(g711_decode(data, "g711_ulaw"))


def alaw_encode(pcm: bytes) -> bytes:
    return g711_encode(to_samples(pcm), "g711_alaw")


def alaw_decode(data: bytes) -> bytes:
    return to_bytes(g711_decode(data, "g711_alaw"))


# --- Resampling -------------------------------------------------------------------------------


def resample(samples: array[int], src_rate: int, dst_rate: int) -> array[int]:
    """Linear-interpolation resampler; integer-ratio downsampling averages blocks instead."""
    if src_rate == dst_rate or not samples:
        return array("h", samples)
    if src_rate > dst_rate and src_rate % dst_rate == 0:
        k = src_rate // dst_rate
        n = len(samples) // k
        return array("h", [sum(samples[i * k : i * k + k]) // k for i in range(n)])
    n_out = len(samples) * dst_rate // src_rate
    step = src_rate / dst_rate
    last = len(samples) - 1
    out = array("h", bytes(2 * n_out))
    for i in range(n_out):
        pos = i * step
        j = int(pos)
        if j >= last:
            out[i] = samples[last]
            continue
        frac = pos - j
        a = samples[j]
        out[i] = int(a + (samples[j + 1] - a) * frac)
    return out


def encode_pcm24k(pcm24k: bytes, fmt: AudioFormat) -> bytes:
    """24 kHz PCM16 into the wire bytes of ``fmt`` (identity for pcm16)."""
    if fmt.kind == "pcm16":
        return pcm24k
    return g711_encode(resample(to_samples(pcm24k), PCM_RATE, G711_RATE), fmt.kind)


def decode_to_samples(data: bytes, fmt: AudioFormat) -> array[int]:
    """Wire bytes of ``fmt`` to 16-bit samples at the format's own rate."""
    if fmt.kind == "pcm16":
        return to_samples(data)
    return g711_decode(data, fmt.kind)


def parse_wav(data: bytes) -> tuple[int, int, bytes]:
    """(sample rate, channels, PCM16 data) of a RIFF/WAVE file.

    espeak-ng writes placeholder sizes when it streams to stdout, so the data chunk simply runs
    to the end of the input when its declared size does not fit.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    pos = 12
    rate = channels = 0
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            channels = int.from_bytes(data[body + 2 : body + 4], "little")
            rate = int.from_bytes(data[body + 4 : body + 8], "little")
            bits = int.from_bytes(data[body + 14 : body + 16], "little")
            if bits != 16:
                raise ValueError(f"only 16-bit WAV is supported, got {bits}")
        elif cid == b"data":
            end = body + size if body + size <= len(data) else len(data)
            return rate, channels, data[body:end]
        pos = body + size + (size & 1)
    raise ValueError("WAV file without a data chunk")
