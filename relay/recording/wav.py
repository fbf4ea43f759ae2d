"""WAV headers and stereo (de)interleaving for the recording's ``audio.wav``.

Rules of this module:
- ``audio.wav`` is stereo, left = caller, right = assistant, in the session's encoding: PCM16 LE
  (format tag 1, 44-byte header) or G.711 μ-law / A-law (format tags 7 / 6, with the ``cbSize`` and
  ``fact`` chunk that non-PCM WAVs carry: 58-byte header).
- Sizes are only known at the end, so the header is built last (``header(fmt, frames)``) and goes
  in front of the first multipart part.
- Pure, no I/O (``interleave_into`` only yields the GIL between slices: it runs in a worker).
"""

from __future__ import annotations

import struct
import time
from array import array
from dataclasses import dataclass

from relay.recording.audioformat import AudioFormat

_TAGS = {"pcm16": 1, "pcma": 6, "pcmu": 7}
_ENCODINGS = {v: k for k, v in _TAGS.items()}
MAX_DATA_BYTES = 0xFFFFFFFF - 64


def frame_bytes(fmt: AudioFormat) -> int:
    """Bytes of one stereo frame (one sample per channel)."""
    return 2 * fmt.sample_bytes


def header_size(fmt: AudioFormat) -> int:
    return 44 if fmt.encoding == "pcm16" else 58


def header(fmt: AudioFormat, frames: int, channels: int = 2) -> bytes:
    """The RIFF/WAVE header for ``frames`` frames of ``channels`` channels in ``fmt``."""
    sb = fmt.sample_bytes
    data = frames * channels * sb
    if data > MAX_DATA_BYTES:
        raise ValueError("recording exceeds the 4 GiB WAV limit")
    tag = _TAGS[fmt.encoding]
    block = channels * sb
    if tag == 1:
        fmt_chunk = struct.pack(
            "<4sIHHIIHH", b"fmt ", 16, tag, channels, fmt.rate, fmt.rate * block, block, 16
        )
        rest = fmt_chunk
    else:
        fmt_chunk = struct.pack(
            "<4sIHHIIHHH", b"fmt ", 18, tag, channels, fmt.rate, fmt.rate * block, block, 8 * sb, 0
        )
        rest = fmt_chunk + struct.pack("<4sII", b"fact", 4, frames)
    body = b"WAVE" + rest + struct.pack("<4sI", b"data", data)
    return struct.pack("<4sI", b"RIFF", len(body) + data) + body


@dataclass(frozen=True, slots=True)
class WavInfo:
    fmt: AudioFormat
    channels: int
    data_offset: int
    data_size: int

    @property
    def frames(self) -> int:
        return self.data_size // (self.channels * self.fmt.sample_bytes)


def parse_header(blob: bytes) -> WavInfo:
    """Read the header of a WAV written by the relay (or any simple PCM/G.711 WAV).

    Raises:
        ValueError: not a RIFF/WAVE file, or an unsupported format.
    """
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt: AudioFormat | None = None
    channels = 0
    while pos + 8 <= len(blob):
        cid, size = struct.unpack_from("<4sI", blob, pos)
        body = pos + 8
        if cid == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", blob, body)
            enc = _ENCODINGS.get(tag)
            if enc is None or (enc == "pcm16" and bits != 16) or (enc != "pcm16" and bits != 8):
                raise ValueError(f"unsupported WAV format tag {tag} with {bits} bits")
            fmt = AudioFormat(enc, rate)
        elif cid == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk before fmt chunk")
            return WavInfo(fmt, channels, body, size)
        pos = body + size + (size & 1)
    raise ValueError("WAV has no data chunk")


def interleave(left: bytes, right: bytes, fmt: AudioFormat) -> bytes:
    """Two mono channels of equal length → one stereo buffer."""
    if len(left) != len(right):
        raise ValueError("channels differ in length")
    if fmt.sample_bytes == 1:
        out = bytearray(2 * len(left))
        out[0::2] = left
        out[1::2] = right
        return bytes(out)
    n = len(left) // 2
    a = array("h", bytes(4 * n))
    a[0::2] = array("h", left)
    a[1::2] = array("h", right)
    return a.tobytes()


def interleave_into(
    out: bytearray,
    offset: int,
    left: bytes | bytearray,
    right: bytes | bytearray,
    nbytes: int,
    sample_bytes: int,
) -> None:
    """``interleave(left[:nbytes], right[:nbytes])`` written into ``out`` from ``offset`` on.

    No buffer for the result and no copy of the inputs; it works in slices of ``_SLICE_FRAMES``
    frames with a ``time.sleep(0)`` after each: it runs in a worker thread and holds the GIL
    while copying, so the event loop gets the GIL back every half millisecond or so.
    """
    sb = sample_bytes
    step = _SLICE_FRAMES * sb
    for i in range(0, nbytes, step):
        j = min(i + step, nbytes)
        o = offset + 2 * i
        e = offset + 2 * j
        if sb == 1:
            out[o:e:2] = left[i:j]
            out[o + 1 : e : 2] = right[i:j]
        else:
            out[o:e:4] = left[i:j:2]
            out[o + 1 : e : 4] = left[i + 1 : j : 2]
            out[o + 2 : e : 4] = right[i:j:2]
            out[o + 3 : e : 4] = right[i + 1 : j : 2]
        time.sleep(0)


_SLICE_FRAMES = 1 << 17


def split(data: bytes | memoryview, fmt: AudioFormat) -> tuple[bytes, bytes]:
    """One stereo buffer → (left, right) mono buffers."""
    if fmt.sample_bytes == 1:
        b = bytes(data)
        return b[0::2], b[1::2]
    a = array("h")
    a.frombytes(bytes(data)[: len(data) - len(data) % 4])
    return a[0::2].tobytes(), a[1::2].tobytes()
