"""Budget windows: UTC calendar hours, days and months.

Rules of this module:
- Windows are calendar periods in UTC, not rolling: the ``day`` window is 00:00:00Z to the next
  00:00:00Z, the ``month`` window starts on the 1st. A budget resets at its window's end.
- Time is passed in (seconds since the epoch); nothing here reads a clock.
- A window's id (``h2026112315``, ``d20261123``, ``m202611``) names its ledger key, so every replica
  that agrees on the UTC time agrees on the key without talking to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PERIODS = ("hour", "day", "month")
"""The windowed periods, in the order the ledger passes their keys (the Lua scripts rely on it)."""

_RETAIN = {"hour": 2 * 3600, "day": 2 * 86400, "month": 0}
"""How long a window's counters outlive its end (for the usage endpoint and late reconciles)."""


@dataclass(frozen=True, slots=True)
class Window:
    per: str
    id: str
    start: datetime
    end: datetime

    def seconds_left(self, now: float) -> int:
        """Whole seconds until the window resets (at least 1): a ``Retry-After`` value."""
        return max(1, math.ceil(self.end.timestamp() - now))

    def ttl_seconds(self, now: float) -> int:
        """Expiry for the window's ledger key: its end plus a retention margin."""
        keep = _RETAIN[self.per] or 35 * 86400
        return max(1, math.ceil(self.end.timestamp() - now) + keep)


def window(per: str, now: float) -> Window:
    """The ``per`` window (hour, day or month, UTC) that contains ``now``."""
    t = datetime.fromtimestamp(now, tz=UTC)
    if per == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return Window(per, start.strftime("h%Y%m%d%H"), start, start + timedelta(hours=1))
    if per == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(per, start.strftime("d%Y%m%d"), start, start + timedelta(days=1))
    if per == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return Window(per, start.strftime("m%Y%m"), start, end)
    raise ValueError(f"not a windowed period: {per!r}")


def windows(now: float) -> tuple[Window, Window, Window]:
    """The hour, day and month windows containing ``now`` (the ledger updates all three)."""
    return window("hour", now), window("day", now), window("month", now)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
