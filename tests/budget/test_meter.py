"""Exact metering: input seconds == bytes / byte rate, formats from upstream, heard seconds."""

import base64
from fractions import Fraction

import pytest

from relay.budget.meter import Meter, SessionAudioConfig, b64_decoded_len, b64_len_in, format_bps
from relay.events import string_span


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 959, 960, 961, 4800, 123457])
def test_decoded_length_from_base64_text(n):
    text = base64.b64encode(bytes(range(256)) * (n // 256) + bytes(n % 256)).decode()
    assert b64_decoded_len(text) == n
    assert b64_decoded_len(text.rstrip("=")) == n  # unpadded senders too
    wrapped = f'{{"delta":"{text}"}}'
    assert b64_len_in(wrapped, 10, 10 + len(text)) == n


@pytest.mark.parametrize(
    ("fmt", "bps"),
    [
        ({"type": "audio/pcm", "rate": 24000}, 48000),
        ({"type": "audio/pcm"}, 48000),
        ({"type": "audio/pcmu"}, 8000),
        ({"type": "audio/pcma"}, 8000),
        ("pcm16", 48000),
        ("g711_ulaw", 8000),
        ("g711_alaw", 8000),
        ("mp3", None),
    ],
)
def test_format_rates(fmt, bps):
    assert format_bps(fmt) == bps


def test_pcm16_input_seconds_are_exact():
    m = Meter()
    sizes = [960] * 37 + [4800, 1, 333]
    for n in sizes:
        m.add_input_bytes(b64_decoded_len(base64.b64encode(b"\0" * n).decode()))
    assert m.input_seconds == Fraction(sum(sizes), 48000)
    assert m.in_ticks == sum(sizes)


def test_g711_from_ga_session_updated_then_back_to_pcm():
    cfg = SessionAudioConfig()
    m = Meter(cfg)
    cfg.apply(
        {
            "type": "realtime",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}},
                "output": {"format": {"type": "audio/pcma"}},
            },
        }
    )
    m.add_input_bytes(160 * 50)  # one second of G.711
    m.add_output_bytes("it", 8000)
    assert m.input_seconds == 1 and m.output_seconds == 1
    assert m.in_ticks == 48000 and m.out_ticks == 48000
    cfg.apply({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}})
    m.add_input_bytes(4800)
    assert m.input_seconds == Fraction(11, 10)


def test_beta_session_fields():
    cfg = SessionAudioConfig()
    cfg.apply(
        {
            "input_audio_format": "g711_alaw",
            "output_audio_format": "pcm16",
            "max_response_output_tokens": 300,
            "input_audio_transcription": {"model": "whisper-1"},
            "instructions": "abc",
        }
    )
    assert (cfg.in_bps, cfg.out_bps, cfg.max_output_tokens, cfg.transcription_model) == (
        8000,
        48000,
        300,
        "whisper-1",
    )
    assert cfg.instructions_chars == 3
    cfg.apply({"max_response_output_tokens": "inf"})
    assert cfg.max_output_tokens is None


def test_ga_session_fields():
    cfg = SessionAudioConfig()
    cfg.apply(
        {
            "type": "realtime",
            "max_output_tokens": 512,
            "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
        }
    )
    assert cfg.max_output_tokens == 512 and cfg.transcription_model == "gpt-4o-mini-transcribe"


def test_heard_is_cut_at_truncate():
    m = Meter()
    for _ in range(30):
        m.add_output_bytes("a", 4800)  # 3 s generated
    m.add_output_bytes("b", 48000)  # 1 s, never truncated
    assert m.truncate("a", 1250) == 1250 * 48  # heard 1.25 s of item a
    assert m.heard_seconds == Fraction(5, 4) + 1
    assert m.output_seconds == 4
    assert m.truncate("a", 9000) == 1250 * 48  # a later, longer truncate cannot grow what was heard
    assert m.finalize_heard("a") == 60000 and m.finalize_heard("a") == 0


def test_scan_string_finds_flat_values_or_gives_up():
    text = '{"type":"response.output_audio.delta","item_id":"item_9","delta":"AAAA"}'
    i, j = string_span(text, "delta")
    assert text[i:j] == "AAAA"
    spaced = '{"type": "response.audio.delta", "item_id": "x", "delta" : "QUJD"}'
    i, j = string_span(spaced, "delta")
    assert spaced[i:j] == "QUJD"
    assert string_span('{"delta":"AA\\/A"}', "delta") is None
    assert string_span('{"delta":12}', "delta") is None
    assert string_span('{"other":"x"}', "delta") is None
