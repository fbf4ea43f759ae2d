"""Pure modules: G.711 codecs, resampling, WAV parsing and the energy VAD."""

from __future__ import annotations

import hashlib
import math
from array import array

import pytest

from relay.sim import audio
from relay.sim.vad import Vad, level_for
from tests.support.audio import pcm16_to_alaw, pcm16_to_ulaw, silence_pcm16, speech_pcm16


def tone(ms: int, rate: int = 24_000, dbfs: float = -20.0, hz: float = 440.0) -> array[int]:
    amp = 32767 * 10 ** (dbfs / 20) * math.sqrt(2)  # RMS of the sine == dbfs
    n = rate * ms // 1000
    return array("h", [int(amp * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)])


def silence(ms: int, rate: int = 24_000) -> array[int]:
    return array("h", bytes(2 * (rate * ms // 1000)))


@pytest.mark.parametrize(
    ("code", "value"), [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xF0, 120), (0x70, -120)]
)
def test_ulaw_decode_known_values(code: int, value: int) -> None:
    assert audio.g711_decode(bytes([code]), "g711_ulaw")[0] == value


@pytest.mark.parametrize(("code", "value"), [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256)])
def test_alaw_decode_known_values(code: int, value: int) -> None:
    assert audio.g711_decode(bytes([code]), "g711_alaw")[0] == value


@pytest.mark.parametrize("law", ["g711_ulaw", "g711_alaw"])
def test_g711_every_code_round_trips(law: str) -> None:
    codes = bytes(range(256))
    decoded = audio.g711_decode(codes, law)
    again = audio.g711_encode(decoded, law)
    for c, d, e in zip(codes, decoded, again, strict=True):
        # μ-law has two codes for zero (0x7F and 0xFF); everything else is a fixed point.
        assert e == c or (law == "g711_ulaw" and d == 0), (hex(c), d, hex(e))


@pytest.mark.parametrize("law", ["g711_ulaw", "g711_alaw"])
def test_g711_quantisation_error_is_bounded(law: str) -> None:
    samples = array("h", range(-32768, 32768, 7))
    back = audio.g711_decode(audio.g711_encode(samples, law), law)
    for s, b in zip(samples, back, strict=True):
        # Companding error grows with the segment: at most 1/16 of the magnitude plus a step.
        assert abs(s - b) <= abs(s) / 16 + 16, (s, b)
    assert audio.g711_encode(array("h", [0]), law) == (b"\xff" if law == "g711_ulaw" else b"\xd5")


# sha256 of (encode table over every int16, decode table over every code); these are the exact
# outputs of CPython's audioop.lin2ulaw/lin2alaw/ulaw2lin/alaw2lin (checked when audioop existed).
G711_DIGESTS = {
    "g711_ulaw": (
        "81d633c9e6972a18c74a58720b96cb8ca0bdd096d4060b646dd708c3b846019a",
        "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827",
    ),
    "g711_alaw": (
        "38488f6fd710f4686360edc4d38639f96c491595ef93f8eb8d62d5e07ca6ce7b",
        "e04788d110e58ff8c70c93b8480190d973e3b67876b6119abbaec766cc75c174",
    ),
}


@pytest.mark.parametrize("law", ["g711_ulaw", "g711_alaw"])
def test_g711_tables_match_the_reference(law: str) -> None:
    every = array("h", range(-32768, 32768))
    enc = hashlib.sha256(audio.g711_encode(every, law)).hexdigest()
    dec = hashlib.sha256(audio.to_bytes(audio.g711_decode(bytes(range(256)), law))).hexdigest()
    assert (enc, dec) == G711_DIGESTS[law]


def test_speech_helpers_have_expected_rates() -> None:
    pcm = speech_pcm16("testing one two three")
    assert len(pcm) % 2 == 0 and len(pcm) > 48_000 // 2  # over half a second at 24 kHz
    assert len(pcm16_to_ulaw(pcm)) == len(pcm) // 2 // 3
    assert len(pcm16_to_alaw(pcm)) == len(pcm) // 2 // 3
    assert max(abs(x) for x in audio.to_samples(pcm)) > 3000  # audible, not silence


def test_resample_linear_and_decimation() -> None:
    up = audio.resample(array("h", [0, 1000, 2000, 3000]), 8000, 24000)
    assert len(up) == 12 and list(up[:4]) == [0, 333, 666, 1000]
    down = audio.resample(array("h", [3, 6, 9, 30, 60, 90]), 24000, 8000)
    assert list(down) == [6, 60]


def test_parse_wav_with_streaming_sizes() -> None:
    header = b"RIFF\xff\xff\xff\x7fWAVEfmt " + (16).to_bytes(4, "little")
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (22050).to_bytes(4, "little")
    fmt += (44100).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    data = b"data\xff\xff\xff\x7f" + b"\x01\x00\x02\x00"
    assert audio.parse_wav(header + fmt + data) == (22050, 1, b"\x01\x00\x02\x00")
    with pytest.raises(ValueError):
        audio.parse_wav(b"not a wav file at all")


def feed(vad: Vad, samples: array[int], chunk_ms: int = 20) -> list[tuple[str, int]]:
    step = vad.rate * chunk_ms // 1000
    out = []
    for i in range(0, len(samples), step):
        out += [(e.kind, e.ms) for e in vad.feed(samples[i : i + step])]
    return out


def test_vad_start_and_stop_positions_follow_the_rules() -> None:
    samples = silence(500) + tone(1000) + silence(600)
    assert feed(Vad(24_000, 0.5, 300, 200), samples) == [("start", 200), ("stop", 1700)]
    assert feed(Vad(24_000, 0.5, 0, 500), samples) == [("start", 500), ("stop", 2000)]


def test_vad_padding_is_clamped_and_threshold_matters() -> None:
    samples = silence(100) + tone(400) + silence(300)
    assert feed(Vad(24_000, 0.5, 300, 200), samples) == [("start", 0), ("stop", 700)]
    assert feed(Vad(24_000, 0.95, 300, 200), samples) == []  # -20 dBFS is below -12.5 dBFS
    assert level_for(0.5) == pytest.approx(32768 * 10 ** (-35 / 20))


def test_vad_chunking_does_not_change_positions() -> None:
    samples = silence(330) + tone(770) + silence(450)
    a = feed(Vad(24_000), samples, chunk_ms=20)
    b = feed(Vad(24_000), samples, chunk_ms=7)
    assert a == b == [("start", 30), ("stop", 1300)]


def test_vad_on_g711_audio_at_8k() -> None:
    pcm = audio.to_bytes(silence(600) + tone(800) + silence(400))
    ulaw = pcm16_to_ulaw(pcm)
    vad = Vad(8000, 0.5, 300, 200)
    events = feed(vad, audio.g711_decode(ulaw, "g711_ulaw"))
    assert events == [("start", 300), ("stop", 1600)]
    assert vad.position_ms == 1800


def test_real_speech_is_detected() -> None:
    pcm = silence_pcm16(1000) + speech_pcm16("hello there how are you") + silence_pcm16(700)
    events = feed(Vad(24_000), audio.to_samples(pcm))
    assert [k for k, _ in events] == ["start", "stop"]
    assert 700 <= events[0][1] <= 1000
