"""Audio formats, G.711 codecs and WAV headers (sans-I/O)."""

from __future__ import annotations

import os
import wave
from io import BytesIO

import pytest

from relay.recording.audioformat import (
    ALAW_TO_PCM,
    PCM16_24K,
    PCMA,
    PCMU,
    ULAW_TO_PCM,
    AudioFormat,
    convert,
    from_pcm16,
    session_formats,
    to_pcm16,
)
from relay.recording.wav import header, header_size, interleave, parse_header, split


def test_session_formats_both_dialects() -> None:
    ga = {
        "type": "realtime",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}},
        },
    }
    assert session_formats(ga) == (PCMU, PCM16_24K)
    beta = {"input_audio_format": "g711_alaw", "output_audio_format": "g711_ulaw"}
    assert session_formats(beta) == (PCMA, PCMU)
    assert session_formats({"instructions": "hi"}) == (None, None)
    assert session_formats(None) == (None, None)


@pytest.mark.parametrize("fmt,table", [(PCMU, ULAW_TO_PCM), (PCMA, ALAW_TO_PCM)])
def test_g711_round_trip_every_code(fmt: AudioFormat, table: tuple[int, ...]) -> None:
    codes = bytes(range(256))
    decoded = to_pcm16(codes, fmt)
    assert list(decoded) == list(table)
    again = from_pcm16(decoded, fmt)
    # μ-law has two zero codes (0x7F, 0xFF); everything else round-trips exactly.
    diff = [i for i in range(256) if again[i] != codes[i]]
    assert diff == ([0x7F] if fmt == PCMU else [])
    assert table[0xFF if fmt == PCMU else 0xD5] in (0, 8, -8)  # silence codes decode to ~0


def test_known_g711_values() -> None:
    assert ULAW_TO_PCM[0x00] == -32124 and ULAW_TO_PCM[0x80] == 32124
    assert ALAW_TO_PCM[0x55] == -8 and ALAW_TO_PCM[0xD5] == 8


def test_convert_pcm24k_to_ulaw_and_back_keeps_duration() -> None:
    pcm = os.urandom(4800)  # 100 ms at 24 kHz
    ulaw = convert(pcm, PCM16_24K, PCMU)
    assert len(ulaw) == 800
    back = convert(ulaw, PCMU, PCM16_24K)
    assert len(back) == 4800
    assert convert(pcm, PCM16_24K, PCM16_24K) is pcm


def test_pcm_wav_header_is_read_by_the_stdlib() -> None:
    frames = 24000
    data = os.urandom(frames * 4)
    blob = header(PCM16_24K, frames) + data
    assert header_size(PCM16_24K) == 44
    with wave.open(BytesIO(blob)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 24000, frames)
        assert w.readframes(frames) == data


@pytest.mark.parametrize("fmt,tag", [(PCMU, 7), (PCMA, 6)])
def test_g711_wav_header(fmt: AudioFormat, tag: int) -> None:
    h = header(fmt, 8000)
    assert len(h) == header_size(fmt) == 58
    assert int.from_bytes(h[20:22], "little") == tag
    info = parse_header(h + bytes(16000))
    assert (info.fmt, info.channels, info.frames, info.data_offset) == (fmt, 2, 8000, 58)
    assert int.from_bytes(h[4:8], "little") == len(h) + 16000 - 8


def test_interleave_and_split_are_inverse() -> None:
    left, right = os.urandom(960), os.urandom(960)
    stereo = interleave(left, right, PCM16_24K)
    assert stereo[:4] == left[:2] + right[:2]
    assert split(stereo, PCM16_24K) == (left, right)
    l8, r8 = os.urandom(160), os.urandom(160)
    assert split(interleave(l8, r8, PCMU), PCMU) == (l8, r8)


def test_parse_header_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_header(b"not a wav file at all")
