"""Pure decisions of budget enforcement: bounds, limit checks, warnings and the words sent back.

Rules of this module:
- No state and no I/O: the guard and the service pass numbers in and get numbers or payloads back.
- The worst-case cost of a response (its reservation) is
      input bound  × the model's highest input rate (uncached)
    + output cap   × the model's highest output rate
  where the output cap is the response's ``max_output_tokens``, else the session's, else the
  budget's ``reserve_output_tokens``, else pricing.yaml's ``reserve_output_tokens`` (4096), never
  more than the model's maximum. Only an explicit cap makes the bound strict: without one, a
  response longer than the assumed cap can overshoot by its excess. The input bound is the last
  response's context by kind (its input and output text, audio and other tokens) plus what was
  added since (input audio at 10 tokens/s, one token per character of text events), plus a small
  overhead at the highest rate; each kind is priced at its uncached input rate, and the whole is
  capped at the context window × the highest input rate.
  It also reserves ``input + output`` tokens and output audio at 20 tokens/s (50 ms per token).
- Messages name the budget, its use and its reset time; they never carry content.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from relay.budget.ledger import Check, Used
from relay.budget.pricing import MILLION, ModelPrices
from relay.budget.spec import BudgetSpec, Limit
from relay.budget.units import TICKS_PER_SECOND, Amounts, natural, unit_name, usd_to_nano
from relay.budget.windows import PERIODS, iso, window
from relay.events import error_event

PERIOD_INDEX = {p: i for i, p in enumerate(PERIODS)}
INPUT_TICKS_PER_TOKEN = TICKS_PER_SECOND // 10
"""User audio is 10 tokens per second (one per 100 ms)."""
OUTPUT_TICKS_PER_TOKEN = TICKS_PER_SECOND // 20
"""Assistant audio is 20 tokens per second (one per 50 ms)."""
INPUT_OVERHEAD_TOKENS = 64
"""Special tokens and item framing a response adds to its context, generously."""


def checks_for(spec: BudgetSpec | None) -> tuple[Check, ...]:
    if spec is None:
        return ()
    return tuple(Check(PERIOD_INDEX[lim.per], lim.metric, lim.units) for lim in spec.windowed_limits)


def output_cap(
    prices: ModelPrices,
    response_cap: int | None,
    session_cap: int | None,
    spec: BudgetSpec | None,
    default: int,
) -> int:
    """The output tokens a response is assumed to produce at most (module docstring)."""
    cap = response_cap or session_cap or (spec.reserve_output_tokens if spec else None) or default
    return min(cap, prices.max_output_tokens)


@dataclass(frozen=True, slots=True)
class InputBound:
    """Upper bound of a response's input tokens, by kind (priced at that kind's rate)."""

    text: int = 0
    audio: int = 0
    other: int = 0
    """tokens of unknown kind (images, overhead): priced at the highest input rate"""

    @property
    def tokens(self) -> int:
        return self.text + self.audio + self.other


def input_bound(prices: ModelPrices, text: int, audio: int, other: int) -> InputBound:
    bound = InputBound(text, audio, other + INPUT_OVERHEAD_TOKENS)
    if bound.tokens > prices.context_window:
        return InputBound(other=prices.context_window)
    return bound


def input_cost(prices: ModelPrices, bound: InputBound) -> Decimal:
    mix = (
        bound.text * prices.text.input
        + bound.audio * prices.audio.input
        + bound.other * prices.max_input_rate
    )
    return min(mix, prices.context_window * prices.max_input_rate) / MILLION


def response_bound(prices: ModelPrices, bound: InputBound, output_tokens: int) -> Amounts:
    """The reservation for one response (module docstring)."""
    usd = input_cost(prices, bound) + output_tokens * prices.max_output_rate / MILLION
    return Amounts(
        usd=usd_to_nano(usd),
        tokens=bound.tokens + output_tokens,
        aout=output_tokens * OUTPUT_TICKS_PER_TOKEN,
    )


def abandoned_cost(prices: ModelPrices, bound: InputBound, out_ticks: int) -> tuple[Decimal, int]:
    """Estimate for a response whose ``response.done`` never came (the session ended under it).

    Its context was processed (the input bound) and the audio it streamed was generated (metered
    seconds at 20 tokens/s and the audio output rate).
    """
    out_tokens = -(-out_ticks // OUTPUT_TICKS_PER_TOKEN)
    rate = prices.audio.output or prices.max_output_rate
    return input_cost(prices, bound) + out_tokens * rate / MILLION, bound.tokens + out_tokens


def session_failure(
    limits: Iterable[Limit], used: Amounts, reserved: Amounts, amount: Amounts
) -> Limit | None:
    """The first per-session limit that ``amount`` (on top of use and reservations) would break."""
    for lim in limits:
        u = used.metric(lim.metric)
        if u >= lim.units or u + reserved.metric(lim.metric) + amount.metric(lim.metric) > lim.units:
            return lim
    return None


def window_failure(limits: Iterable[Limit], used: Used, reserved: Amounts, amount: Amounts) -> Limit | None:
    for lim in limits:
        u = used[PERIOD_INDEX[lim.per]].metric(lim.metric)
        if u >= lim.units or u + reserved.metric(lim.metric) + amount.metric(lim.metric) > lim.units:
            return lim
    return None


def exhausted(limits: Iterable[Limit], used: Used, session_used: Amounts) -> Limit | None:
    """The first limit whose use has reached it."""
    for lim in limits:
        u = session_used if not lim.windowed else used[PERIOD_INDEX[lim.per]]
        if u.metric(lim.metric) >= lim.units:
            return lim
    return None


def crossed(lim: Limit, before: int, after: int) -> bool:
    """True once: when this increment takes the use of ``lim`` over its warning threshold."""
    if lim.warn_at is None or lim.units <= 0:
        return False
    threshold = lim.warn_at * lim.units
    return before < threshold <= after


def used_of(lim: Limit, used: Used, session_used: Amounts) -> int:
    return (used[PERIOD_INDEX[lim.per]] if lim.windowed else session_used).metric(lim.metric)


def ratio(lim: Limit, units: int) -> float:
    return float(units) / lim.units if lim.units else (1.0 if units else 0.0)


def describe(lim: Limit, used_units: int, now: float) -> tuple[str, str | None, int | None]:
    """(sentence, reset time ISO, seconds to reset) for a budget at ``used_units``."""
    unit = unit_name(lim.metric)
    used = _fmt(natural(lim.metric, used_units), lim.metric)
    text = (
        f"Budget '{lim.name}' ({lim.metric} per {lim.per}) is exhausted: used {used} of {lim.limit} {unit}."
    )
    if not lim.windowed:
        return text + " It does not reset during this session.", None, None
    w = window(lim.per, now)
    reset = iso(w.end)
    return f"{text} It resets at {reset}.", reset, w.seconds_left(now)


def refusal_text(lim: Limit, used_units: int, reserved_units: int, bound_units: int, now: float) -> str:
    """Why a response may not start: the worst case does not fit in what is left."""
    text, _, _ = describe(lim, used_units, now)
    if used_units < lim.units:
        left = _fmt(natural(lim.metric, max(0, lim.units - used_units - reserved_units)), lim.metric)
        need = _fmt(natural(lim.metric, bound_units), lim.metric)
        unit = unit_name(lim.metric)
        text = (
            f"Budget '{lim.name}' ({lim.metric} per {lim.per}) cannot cover another response: "
            f"{left} {unit} left, a response may cost up to {need} {unit}."
        ) + text[text.index(" It ") :]
    return text


def budget_error(message: str, lim: Limit, event_id: str | None = None) -> dict[str, Any]:
    return error_event("budget_exceeded", message, param=lim.name, event_id=event_id)


def concurrency_message(tenant: str, limit: int) -> str:
    return f"Tenant '{tenant}' already has {limit} concurrent session(s), its limit (concurrent_sessions)."


def _fmt(value: float, metric: str) -> str:
    if metric == "usd":
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    if metric == "tokens":
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


def limits_for_metric(limits: Sequence[Limit], *metrics: str) -> tuple[Limit, ...]:
    return tuple(lim for lim in limits if lim.metric in metrics)
