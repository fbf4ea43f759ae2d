"""What one session's metering shows the world: Prometheus counters and the session summary.

Rules of this module:
- Label children are resolved once per session (or once per new label value), never per event.
- Token kinds are disjoint (``input_text`` is uncached text, ``input_text_cached`` the cached
  part), so ``sum by (tenant) (relay_tokens_total)`` is the tokens billed.
- Counters move when usage is settled or flushed, not per audio event: input/output seconds on
  each ledger flush, heard seconds when an item is truncated or the session ends, tokens and USD
  on ``response.done`` and on each transcription.
- The summary (``SessionSummary.usage``) is JSON-able; USD appears both as a float and as an exact
  decimal string.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from relay.budget.enforce import PERIOD_INDEX, ratio
from relay.budget.ledger import Used
from relay.budget.meter import Meter
from relay.budget.pricing import ModelPrices, TokenUsage
from relay.budget.spec import Limit
from relay.budget.units import TICKS_PER_SECOND, Amounts, nano_to_usd, natural
from relay.contracts import SessionInfo
from relay.metrics import RelayMetrics


class SessionReport:
    def __init__(self, metrics: RelayMetrics, info: SessionInfo, prices: ModelPrices) -> None:
        self.metrics = metrics
        self.tenant = info.tenant
        self.model = info.model or prices.name
        audio = metrics.audio_seconds_total
        self._in = audio.labels(self.tenant, "input")
        self._out = audio.labels(self.tenant, "output")
        self._heard = audio.labels(self.tenant, "heard")
        self._cost = metrics.cost_usd_total.labels(self.tenant, self.model)
        self._token_children: dict[tuple[str, str], Any] = {}
        self.tokens: dict[str, int] = {}
        self.transcription_tokens: dict[str, int] = {}
        self.cost = Decimal(0)
        self.transcription_cost = Decimal(0)
        self.estimated_cost = Decimal(0)
        self.statuses: dict[str, int] = {}
        self.heard_ticks = 0

    def _count_tokens(self, model: str, kinds: dict[str, int]) -> None:
        for kind, n in kinds.items():
            child = self._token_children.get((model, kind))
            if child is None:
                child = self._token_children[(model, kind)] = self.metrics.tokens_total.labels(
                    self.tenant, model, kind
                )
            child.inc(n)

    def response(self, status: str, usage: TokenUsage, cost: Decimal) -> None:
        kinds = usage.kinds()
        for kind, n in kinds.items():
            self.tokens[kind] = self.tokens.get(kind, 0) + n
        self._count_tokens(self.model, kinds)
        self.cost += cost
        self._cost.inc(float(cost))
        key = status or "unknown"
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def transcription(self, model: str, kinds: dict[str, int], cost: Decimal) -> None:
        for kind, n in kinds.items():
            self.transcription_tokens[kind] = self.transcription_tokens.get(kind, 0) + n
        self._count_tokens(model, kinds)
        self.transcription_cost += cost
        self.metrics.cost_usd_total.labels(self.tenant, model).inc(float(cost))

    def abandoned(self, cost: Decimal, tokens: int) -> None:
        """A response cut off by the session's end: billed at the estimate (docs/budgets.md)."""
        self.estimated_cost += cost
        self._cost.inc(float(cost))
        self._count_tokens(self.model, {"estimated": tokens})
        self.tokens["estimated"] = self.tokens.get("estimated", 0) + tokens
        self.statuses["abandoned"] = self.statuses.get("abandoned", 0) + 1

    def audio(self, in_ticks: int, out_ticks: int) -> None:
        if in_ticks:
            self._in.inc(in_ticks / TICKS_PER_SECOND)
        if out_ticks:
            self._out.inc(out_ticks / TICKS_PER_SECOND)

    def heard(self, ticks: int) -> None:
        if ticks:
            self.heard_ticks += ticks
            self._heard.inc(ticks / TICKS_PER_SECOND)

    def rejected(self, budget: str) -> None:
        self.metrics.budget_rejections_total.labels(self.tenant, budget).inc()

    def warned(self, budget: str) -> None:
        self.metrics.budget_warnings_total.labels(self.tenant, budget).inc()

    def gauges(self, limits: Sequence[Limit], used: Used) -> None:
        set_gauges(self.metrics, self.tenant, limits, used)

    def summary(
        self, meter: Meter, session: Amounts, exhausted: Limit | None, degraded: bool
    ) -> dict[str, Any]:
        total_usd = nano_to_usd(session.usd)
        return {
            "model": self.model,
            "audio_seconds": {
                "input": float(meter.input_seconds),
                "output": float(meter.output_seconds),
                "heard": float(meter.heard_seconds),
            },
            "audio_bytes": {"input": sum(meter.in_bytes.values()), "output": sum(meter.out_bytes.values())},
            "tokens": {"total": sum(self.tokens.values()), **self.tokens},
            "transcription_tokens": dict(self.transcription_tokens),
            "cost_usd": float(total_usd),
            "cost_usd_exact": str(total_usd),
            "responses": dict(self.statuses),
            "budget": {"exhausted": exhausted.name if exhausted else None, "store_degraded": degraded},
        }


def set_gauges(metrics: RelayMetrics, tenant: str, limits: Sequence[Limit], used: Used) -> None:
    """``relay_budget_remaining`` (natural units) and ``relay_budget_used_ratio`` per windowed budget."""
    for lim in limits:
        if not lim.windowed:
            continue
        u = used[PERIOD_INDEX[lim.per]].metric(lim.metric)
        metrics.budget_remaining.labels(tenant, lim.name).set(natural(lim.metric, max(0, lim.units - u)))
        metrics.budget_used_ratio.labels(tenant, lim.name).set(ratio(lim, u))
