"""parse_budgets: the shape of the budgets section, errors named by key path, and the schema."""

from decimal import Decimal

import jsonschema
import pytest
import yaml

from relay.budget.spec import BUDGETS_SCHEMA, BudgetSpecError, parse_budgets

EXAMPLE = """
limits:
  - {name: daily_usd, metric: usd, per: day, limit: 50, warn_at: 0.8}
  - {name: session_audio, metric: audio_seconds, per: session, limit: 1800}
  - {metric: tokens, per: month, limit: 2_000_000}
concurrent_sessions: 10
max_session_seconds: 3600
idle_timeout_seconds: 300
on_exhausted: after_response
"""


def test_example_parses_with_units():
    spec = parse_budgets(yaml.safe_load(EXAMPLE), "budgets")
    daily, audio, tokens = spec.limits
    assert (daily.name, daily.metric, daily.per, daily.limit, daily.warn_at) == (
        "daily_usd",
        "usd",
        "day",
        50,
        Decimal("0.8"),
    )
    assert daily.units == 50 * 10**9  # nano-USD
    assert audio.units == 1800 * 48_000  # ticks of 1/48000 s
    assert tokens.name == "tokens_per_month" and tokens.units == 2_000_000
    assert spec.concurrent_sessions == 10 and spec.max_session_seconds == 3600.0
    assert spec.idle_timeout_seconds == 300.0 and spec.on_exhausted == "after_response"
    assert spec.windowed_limits == (daily, tokens) and spec.session_limits == (audio,)
    jsonschema.validate(yaml.safe_load(EXAMPLE), BUDGETS_SCHEMA)


def test_decimal_limits_are_exact():
    spec = parse_budgets({"limits": [{"metric": "usd", "per": "hour", "limit": 0.1}]}, "budgets")
    assert spec.limits[0].limit == Decimal("0.1") and spec.limits[0].units == 100_000_000


def test_empty_and_none():
    assert parse_budgets(None, "budgets").limits == ()
    assert not parse_budgets({}, "budgets").needs_ledger
    assert parse_budgets({"concurrent_sessions": 2}, "budgets").needs_ledger
    session_only = parse_budgets({"limits": [{"metric": "usd", "per": "session", "limit": 1}]}, "budgets")
    assert not session_only.needs_ledger


BAD = [
    (
        {"limits": [{}, {}, {"metric": "usd", "per": "week", "limit": 1}]},
        "budgets.limits[0].metric: required",
    ),
    (
        {
            "limits": [
                {"metric": "usd", "per": "day", "limit": 1},
                {"metric": "usd", "per": "hour", "limit": 1},
                {"metric": "usd", "per": "week", "limit": 1},
            ]
        },
        "budgets.limits[2].per: expected one of session, hour, day, month",
    ),
    (
        {"limits": [{"metric": "dollars", "per": "day", "limit": 1}]},
        "budgets.limits[0].metric: expected one of",
    ),
    ({"limits": [{"metric": "usd", "per": "day", "limit": -1}]}, "budgets.limits[0].limit: must be >= 0"),
    (
        {"limits": [{"metric": "usd", "per": "day", "limit": "lots"}]},
        "budgets.limits[0].limit: expected a number",
    ),
    (
        {"limits": [{"metric": "usd", "per": "day", "limit": True}]},
        "budgets.limits[0].limit: expected a number",
    ),
    (
        {"limits": [{"metric": "tokens", "per": "day", "limit": 1.5}]},
        "budgets.limits[0].limit: a token limit",
    ),
    (
        {"limits": [{"metric": "usd", "per": "day", "limit": 1, "warn_at": 80}]},
        "budgets.limits[0].warn_at: must be",
    ),
    (
        {"limits": [{"metric": "usd", "per": "day", "limit": 1, "colour": 1}]},
        "budgets.limits[0].colour: unknown key",
    ),
    (
        {"limits": [{"name": "a b", "metric": "usd", "per": "day", "limit": 1}]},
        "budgets.limits[0].name: expected",
    ),
    (
        {
            "limits": [
                {"name": "x", "metric": "usd", "per": "day", "limit": 1},
                {"name": "x", "metric": "tokens", "per": "day", "limit": 1},
            ]
        },
        "budgets.limits[1].name: duplicate budget name",
    ),
    ({"limits": {"metric": "usd"}}, "budgets.limits: expected a list"),
    ({"limits": ["usd"]}, "budgets.limits[0]: expected a mapping"),
    ({"concurrent_sessions": -1}, "budgets.concurrent_sessions: must be >= 0"),
    ({"concurrent_sessions": 2.5}, "budgets.concurrent_sessions: expected a whole number"),
    ({"max_session_seconds": 0}, "budgets.max_session_seconds: must be > 0"),
    ({"idle_timeout_seconds": "5m"}, "budgets.idle_timeout_seconds: expected a number"),
    ({"on_exhausted": "later"}, "budgets.on_exhausted: expected one of after_response, immediately"),
    ({"limit": []}, "budgets.limit: unknown key"),
    (["x"], "budgets: expected a mapping"),
]


@pytest.mark.parametrize(("node", "message"), BAD)
def test_errors_name_the_key_path(node, message):
    with pytest.raises(BudgetSpecError) as err:
        parse_budgets(node, "budgets")
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(err.value.key_path + ": ")


# Whole-number token limits and unique names are the parser's alone (not expressible in the schema).
SCHEMA_BAD = [case for case in BAD[1:] if "token limit" not in case[1] and "duplicate" not in case[1]]


@pytest.mark.parametrize(("node", "message"), SCHEMA_BAD)
def test_schema_rejects_what_the_parser_rejects(node, message):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(node, BUDGETS_SCHEMA)


def test_key_path_prefix_is_the_callers():
    with pytest.raises(BudgetSpecError, match=r"^tenants\.acme\.budgets\.on_exhausted: "):
        parse_budgets({"on_exhausted": 1}, "tenants.acme.budgets")
