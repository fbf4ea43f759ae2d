"""Audio formats of a Realtime session and the few conversions the recording needs.

Rules of this module:
- Three formats exist (protocol doc §3, §5.4): PCM16 little-endian mono 24 kHz (GA ``audio/pcm``,
  beta ``pcm16``), G.711 μ-law (``audio/pcmu`` / ``g711_ulaw``) and A-law (``audio/pcma`` /
  ``g711_alaw``), both 8 kHz. The recording keeps the session's own encoding: a G.711 session is
  written as a G.711 WAV (format tag 7 or 6), so the caller channel stays byte-identical.
- Conversion happens only when a chunk arrives in another format than the WAV's (a session whose
  input and output formats differ, or that changes format mid-call): decode to PCM16, resample by
  nearest sample, encode. The event log marks such chunks ``"converted": true``.
- Pure, no I/O. The G.711 codecs follow ITU-T G.711 (segment/quantisation tables built at import).
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: str
    """``pcm16``, ``pcmu`` or ``pcma``."""
    rate: int

    @property
    def sample_bytes(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    @property
    def silence(self) -> bytes:
        """One sample of digital silence."""
        return _SILENCE[self.encoding]

    @property
    def wire_name(self) -> str:
        """The GA name of the format (used in manifests)."""
        return _GA_NAMES[self.encoding]


PCM16_24K = AudioFormat("pcm16", 24000)
PCMU = AudioFormat("pcmu", 8000)
PCMA = AudioFormat("pcma", 8000)
_SILENCE = {"pcm16": b"\x00\x00", "pcmu": b"\xff", "pcma": b"\xd5"}
_GA_NAMES = {"pcm16": "audio/pcm", "pcmu": "audio/pcmu", "pcma": "audio/pcma"}
_BETA = {"pcm16": PCM16_24K, "g711_ulaw": PCMU, "g711_alaw": PCMA}


def from_ga(node: Any) -> AudioFormat | None:
    """``{"type": "audio/pcm", "rate": 24000}`` and friends; None if absent or unknown."""
    if not isinstance(node, dict):
        return None
    t = node.get("type")
    if t == "audio/pcm":
        rate = node.get("rate", 24000)
        return AudioFormat("pcm16", rate if isinstance(rate, int) and rate > 0 else 24000)
    if t == "audio/pcmu":
        return PCMU
    if t == "audio/pcma":
        return PCMA
    return None


def session_formats(session: Any) -> tuple[AudioFormat | None, AudioFormat | None]:
    """(input, output) formats named in a session object of either dialect (None: not named)."""
    if not isinstance(session, dict):
        return None, None
    fin = fout = None
    audio = session.get("audio")
    if isinstance(audio, dict):
        i, o = audio.get("input"), audio.get("output")
        fin = from_ga(i.get("format")) if isinstance(i, dict) else None
        fout = from_ga(o.get("format")) if isinstance(o, dict) else None
    b_in, b_out = session.get("input_audio_format"), session.get("output_audio_format")
    if fin is None and isinstance(b_in, str):
        fin = _BETA.get(b_in)
    if fout is None and isinstance(b_out, str):
        fout = _BETA.get(b_out)
    return fin, fout


# G.711 tables -----------------------------------------------------------------------------------


def _ulaw_decode(u: int) -> int:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def _alaw_decode(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for i, end in enumerate(ends):
        if value <= end:
            return i
    return len(ends)


_U_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_A_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _ulaw_encode(sample: int) -> int:
    v = sample >> 2
    mask = 0xFF
    if v < 0:
        v, mask = -v, 0x7F
    v = min(v, 8159) + 33
    seg = _segment(v, _U_ENDS)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask


def _alaw_encode(sample: int) -> int:
    v = sample >> 3
    if v >= 0:
        mask = 0xD5
    else:
        mask, v = 0x55, -v - 1
    seg = _segment(v, _A_ENDS)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (v >> 1) & 0x0F if seg < 2 else (v >> seg) & 0x0F
    return aval ^ mask


ULAW_TO_PCM = tuple(_ulaw_decode(i) for i in range(256))
ALAW_TO_PCM = tuple(_alaw_decode(i) for i in range(256))


def to_pcm16(data: bytes, fmt: AudioFormat) -> array[int]:
    """Decode to signed 16-bit samples (native order)."""
    if fmt.encoding == "pcm16":
        out = array("h")
        out.frombytes(data[: len(data) - len(data) % 2])
        if sys.byteorder == "big":
            out.byteswap()
        return out
    table = ULAW_TO_PCM if fmt.encoding == "pcmu" else ALAW_TO_PCM
    return array("h", [table[b] for b in data])


def from_pcm16(samples: array[int], fmt: AudioFormat) -> bytes:
    """Encode signed 16-bit samples to ``fmt``'s encoding (little-endian for PCM16)."""
    if fmt.encoding == "pcm16":
        if sys.byteorder == "big":
            samples = array("h", samples)
            samples.byteswap()
        return samples.tobytes()
    enc = _ulaw_encode if fmt.encoding == "pcmu" else _alaw_encode
    return bytes(enc(s) for s in samples)


def resample(samples: array[int], src: int, dst: int) -> array[int]:
    """Nearest-sample resampling; good enough for listening to an audit, not for studio work."""
    if src == dst or not samples:
        return samples
    n = len(samples) * dst // src
    return array("h", [samples[i * src // dst] for i in range(n)])


def convert(data: bytes, src: AudioFormat, dst: AudioFormat) -> bytes:
    """``data`` in ``src`` re-encoded as ``dst`` (identity when the formats match)."""
    if src == dst:
        return data
    return from_pcm16(resample(to_pcm16(data, src), src.rate, dst.rate), dst)
