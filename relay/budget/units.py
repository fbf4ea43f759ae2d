"""Ledger units: every quantity a budget counts is an integer, so sums never drift.

- USD is counted in **nano-dollars** (1e-9 USD). Prices are USD per 1M tokens, so one token at a
  price with up to three decimals (``0.06`` → 60 nUSD) costs a whole number of nano-dollars and a
  cost is exact. A price with more decimals is rounded up once per usage block.
- Audio is counted in **ticks of 1/48,000 s**: one byte of PCM16 at 24 kHz is one tick and one
  byte of G.711 (8 kHz) is six, so both formats the API supports meter exactly.
- Tokens are tokens.

``Amounts`` carries the four counters the ledger keeps (usd, tokens, audio in, audio out); the
metric ``audio_seconds`` is ``ain + aout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction

TICKS_PER_SECOND = 48_000
NANO_PER_USD = 1_000_000_000
_NANO = Decimal(NANO_PER_USD)

COUNTERS = ("usd", "tokens", "ain", "aout")
"""Field order used everywhere the four counters travel as a list (the Lua scripts too)."""


@dataclass(frozen=True, slots=True)
class Amounts:
    usd: int = 0
    """nano-USD"""
    tokens: int = 0
    ain: int = 0
    """input audio ticks (1/48,000 s)"""
    aout: int = 0
    """output audio ticks"""

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.usd + other.usd, self.tokens + other.tokens, self.ain + other.ain, self.aout + other.aout
        )

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.usd - other.usd, self.tokens - other.tokens, self.ain - other.ain, self.aout - other.aout
        )

    def __bool__(self) -> bool:
        return bool(self.usd or self.tokens or self.ain or self.aout)

    def as_list(self) -> list[int]:
        return [self.usd, self.tokens, self.ain, self.aout]

    @classmethod
    def of(cls, values: list[int] | tuple[int, ...]) -> Amounts:
        return cls(int(values[0]), int(values[1]), int(values[2]), int(values[3]))

    def metric(self, metric: str) -> int:
        """The value a budget on ``metric`` compares against its limit."""
        if metric == "usd":
            return self.usd
        if metric == "tokens":
            return self.tokens
        if metric == "audio_seconds_in":
            return self.ain
        if metric == "audio_seconds_out":
            return self.aout
        if metric == "audio_seconds":
            return self.ain + self.aout
        raise ValueError(f"unknown metric {metric!r}")


ZERO = Amounts()


def metric_units(metric: str) -> int:
    """Ledger units in one natural unit of ``metric`` (one USD, one second, one token)."""
    if metric == "usd":
        return NANO_PER_USD
    if metric == "tokens":
        return 1
    if metric.startswith("audio_seconds"):
        return TICKS_PER_SECOND
    raise ValueError(f"unknown metric {metric!r}")


def usd_to_nano(usd: Decimal) -> int:
    """Exact for costs with up to 9 decimals; anything finer rounds up (never under-bills)."""
    return int((usd * _NANO).to_integral_value(rounding=ROUND_CEILING))


def nano_to_usd(nano: int) -> Decimal:
    return Decimal(nano) / _NANO


def ticks_to_seconds(ticks: int) -> Fraction:
    return Fraction(ticks, TICKS_PER_SECOND)


def natural(metric: str, units: int) -> float | int:
    """A ledger value in the metric's natural unit, as a JSON-friendly number (tokens stay whole)."""
    if metric == "usd":
        return float(nano_to_usd(units))
    if metric == "tokens":
        return units
    return units / TICKS_PER_SECOND


def unit_name(metric: str) -> str:
    return {"usd": "USD", "tokens": "tokens"}.get(metric, "s")
