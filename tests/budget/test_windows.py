"""UTC calendar windows: ids, boundaries, Retry-After and key expiry."""

from datetime import UTC, datetime

import pytest

from relay.budget.windows import iso, window, windows


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_hour_day_month_of_one_instant():
    now = ts(2026, 11, 23, 15, 42, 7)
    h, d, m = windows(now)
    assert (h.id, d.id, m.id) == ("h2026112315", "d20261123", "m202611")
    assert iso(h.start) == "2026-11-23T15:00:00Z" and iso(h.end) == "2026-11-23T16:00:00Z"
    assert iso(d.start) == "2026-11-23T00:00:00Z" and iso(d.end) == "2026-11-24T00:00:00Z"
    assert iso(m.start) == "2026-11-01T00:00:00Z" and iso(m.end) == "2026-12-01T00:00:00Z"
    assert h.seconds_left(now) == 17 * 60 + 53
    assert d.seconds_left(now) == 8 * 3600 + 17 * 60 + 53


def test_boundaries_belong_to_the_new_window():
    assert window("day", ts(2026, 11, 24)).id == "d20261124"
    assert window("day", ts(2026, 11, 24) - 0.001).id == "d20261123"
    assert window("hour", ts(2026, 11, 24, 0)).id == "h2026112400"


@pytest.mark.parametrize(
    ("instant", "start", "end"),
    [
        ((2026, 12, 31, 23, 59, 59), "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ((2028, 2, 29, 12), "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
        ((2027, 1, 1), "2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"),
    ],
)
def test_month_rollover(instant, start, end):
    w = window("month", ts(*instant))
    assert (iso(w.start), iso(w.end)) == (start, end)


def test_retry_after_is_at_least_one_second_and_ttl_outlives_the_window():
    end = ts(2026, 11, 24)
    d = window("day", end - 0.2)
    assert d.seconds_left(end - 0.2) == 1
    assert d.ttl_seconds(end - 10) >= 10 + 86400
    m = window("month", end)
    assert m.ttl_seconds(end) > (m.end.timestamp() - end)


def test_not_a_period():
    with pytest.raises(ValueError):
        window("session", 0.0)
