"""USD from usage and pricing.yaml, checked against hand computation."""

from decimal import Decimal

import pytest

from relay.budget.pricing import Pricing, TokenUsage, response_cost, transcription_cost
from relay.budget.units import usd_to_nano
from relay.errors import ConfigError

PRICING = Pricing.load()

# The OpenAPI spec's example: input 132 = text 119 + audio 13 (cached 64, all text);
# output 121 = text 30 + audio 91.
SPEC_USAGE = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}


def test_spec_example_on_gpt_realtime_2():
    u = TokenUsage.parse(SPEC_USAGE)
    assert u.total == 253 and u.input_text == 55 and u.input_text_cached == 64
    # (119-64)×4 + 64×0.40 + 13×32 + 30×24 + 91×64 = 7205.6 per 1M
    hand = (Decimal(55) * 4 + Decimal(64) * Decimal("0.40") + 13 * 32 + 30 * 24 + 91 * 64) / 1_000_000
    cost = response_cost(PRICING.model("gpt-realtime-2"), u)
    assert cost == hand == Decimal("0.0072056")
    assert usd_to_nano(cost) == 7_205_600


def test_cached_audio_and_the_mini_model():
    usage = {
        "input_tokens": 132,
        "output_tokens": 188,
        "input_token_details": {
            "text_tokens": 59,
            "audio_tokens": 73,
            "cached_tokens": 64,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 64},
        },
        "output_token_details": {"text_tokens": 41, "audio_tokens": 147},
    }
    u = TokenUsage.parse(usage)
    # gpt-realtime-2.1-mini: 59×0.60 + 9×10 + 64×0.30 + 41×2.40 + 147×20
    hand = (
        59 * Decimal("0.60") + 9 * 10 + 64 * Decimal("0.30") + 41 * Decimal("2.40") + 147 * 20
    ) / 1_000_000
    assert response_cost(PRICING.model("gpt-realtime-2.1-mini"), u) == hand == Decimal("0.003183")
    assert u.kinds() == {
        "input_text": 59,
        "input_audio": 9,
        "input_audio_cached": 64,
        "output_text": 41,
        "output_audio": 147,
    }


def test_missing_cache_details_assign_cached_to_text_first():
    u = TokenUsage.parse(
        {
            "input_tokens": 100,
            "output_tokens": 0,
            "input_token_details": {"text_tokens": 10, "audio_tokens": 90, "cached_tokens": 40},
        }
    )
    assert (u.input_text_cached, u.input_audio_cached, u.input_audio) == (10, 30, 60)


def test_unattributed_tokens_bill_at_the_highest_rate():
    u = TokenUsage.parse({"input_tokens": 10, "output_tokens": 5})
    p = PRICING.model("gpt-realtime-2")
    assert response_cost(p, u) == (10 * Decimal(32) + 5 * Decimal(64)) / 1_000_000


def test_failed_response_with_zero_or_null_usage_costs_nothing():
    assert TokenUsage.parse(None).total == 0
    assert response_cost(PRICING.model("gpt-realtime"), TokenUsage.parse({"total_tokens": 0})) == 0


def test_snapshot_lookup_and_fallback():
    assert PRICING.model("gpt-realtime-2025-08-28").name == "gpt-realtime-2025-08-28"
    assert PRICING.model("gpt-realtime-mini-2025-12-15").name == "gpt-realtime-mini"
    assert PRICING.model("gpt-4o-realtime-preview-2024-12-17").audio.input == 40
    assert PRICING.model("gpt-4o-realtime-preview-2024-10-01").audio.input == 100
    assert (
        not PRICING.knows_model("gpt-imaginary") and PRICING.model("gpt-imaginary").name == "gpt-realtime-2"
    )


@pytest.mark.parametrize(
    ("model", "text", "audio"),
    [  # realtime-protocol.md §5.5: (in, cached, out) per 1M
        ("gpt-realtime-1.5", ("4.00", "0.40", "16.00"), ("32.00", "0.40", "64.00")),
        ("gpt-realtime-2", ("4.00", "0.40", "24.00"), ("32.00", "0.40", "64.00")),
        ("gpt-realtime-2.1-mini", ("0.60", "0.06", "2.40"), ("10.00", "0.30", "20.00")),
        ("gpt-4o-realtime-preview", ("5.00", "2.50", "20.00"), ("40.00", "2.50", "80.00")),
        ("gpt-4o-mini-realtime-preview", ("0.60", "0.30", "2.40"), ("10.00", "0.30", "20.00")),
    ],
)
def test_shipped_prices_match_the_protocol_notes(model, text, audio):
    p = PRICING.model(model)
    assert (p.text.input, p.text.cached_input, p.text.output) == tuple(Decimal(x) for x in text)
    assert (p.audio.input, p.audio.cached_input, p.audio.output) == tuple(Decimal(x) for x in audio)


def test_transcription_tokens_and_duration():
    cost, kinds = transcription_cost(
        PRICING.transcription("gpt-4o-transcribe"),
        {
            "type": "tokens",
            "input_tokens": 13,
            "output_tokens": 7,
            "total_tokens": 20,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 13},
        },
    )
    assert cost == (13 * Decimal(6) + 7 * Decimal(10)) / 1_000_000
    assert kinds == {"input_audio": 13, "output_text": 7}
    cost, kinds = transcription_cost(PRICING.transcription("whisper-1"), {"type": "duration", "seconds": 90})
    assert cost == Decimal("0.009") and kinds == {}
    assert PRICING.transcription("unknown-asr").name == "gpt-4o-transcribe"


def test_bad_pricing_files_name_the_key(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "fallback_model: m\nfallback_transcription: t\nmodels: {m: {context_window: 1, max_output_tokens: 1, "
        "text: {input: 1, output: 1}, audio: {input: x, output: 1}}}\ntranscription: {t: {per_minute: 1}}\n"
    )
    with pytest.raises(ConfigError, match=r"models\.m\.audio\.input"):
        Pricing.load(f)
    with pytest.raises(ConfigError, match="cannot read"):
        Pricing.load(tmp_path / "missing.yaml")
