"""The usage report: what ``GET /v1/relay/usage?tenant=T`` and ``relay usage`` show.

Rules of this module:
- Pure formatting of a ledger view; JSON-able output only (numbers, strings, lists, dicts).
- Amounts are in natural units (USD, seconds, tokens); ``remaining`` never goes below zero and
  ``used_ratio`` may exceed 1 (a settled response can overshoot its budget by its own cost).
- Per-session budgets have no shared window: they are listed with this replica's live sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from relay.budget.enforce import PERIOD_INDEX, ratio
from relay.budget.ledger import LedgerView
from relay.budget.spec import BudgetSpec, Limit
from relay.budget.units import Amounts, natural, unit_name
from relay.budget.windows import PERIODS, Window, iso

if TYPE_CHECKING:
    from relay.budget.guard import BudgetGuard


def usage_report(
    tenant: str,
    spec: BudgetSpec | None,
    view: LedgerView,
    wins: Sequence[Window],
    now: float,
    guards: Sequence[BudgetGuard],
) -> dict[str, Any]:
    budgets: list[dict[str, Any]] = []
    for lim in spec.limits if spec else ():
        if lim.windowed:
            budgets.append(_windowed(lim, view, wins[PERIOD_INDEX[lim.per]]))
        else:
            budgets.append(_per_session(lim, guards))
    concurrency: dict[str, Any] = {"limit": spec.concurrent_sessions if spec else None, "active": view.active}
    if spec is not None and spec.concurrent_sessions is not None:
        concurrency["remaining"] = max(0, spec.concurrent_sessions - view.active)
    return {
        "tenant": tenant,
        "as_of": iso_now(now),
        "budgets": budgets,
        "concurrent_sessions": concurrency,
        "windows": {
            per: _amounts(view.used[i], w) for i, (per, w) in enumerate(zip(PERIODS, wins, strict=True))
        },
        "reserved": _plain(view.reserved),
        "live_sessions_here": len(guards),
    }


def _windowed(lim: Limit, view: LedgerView, w: Window) -> dict[str, Any]:
    used = view.used[PERIOD_INDEX[lim.per]].metric(lim.metric)
    reserved = view.reserved.metric(lim.metric)
    return {
        **_head(lim),
        "used": natural(lim.metric, used),
        "reserved": natural(lim.metric, reserved),
        "remaining": natural(lim.metric, max(0, lim.units - used)),
        "used_ratio": round(ratio(lim, used), 6),
        "exhausted": used >= lim.units,
        "window": {"id": w.id, "start": iso(w.start), "resets_at": iso(w.end)},
    }


def _per_session(lim: Limit, guards: Sequence[BudgetGuard]) -> dict[str, Any]:
    sessions = []
    for g in guards:
        used = g.session_used.metric(lim.metric)
        sessions.append(
            {
                "session_id": g.info.session_id,
                "used": natural(lim.metric, used),
                "remaining": natural(lim.metric, max(0, lim.units - used)),
                "used_ratio": round(ratio(lim, used), 6),
            }
        )
    return {**_head(lim), "sessions_here": sessions}


def _head(lim: Limit) -> dict[str, Any]:
    return {
        "name": lim.name,
        "metric": lim.metric,
        "per": lim.per,
        "limit": int(lim.limit) if lim.metric == "tokens" else float(lim.limit),
        "unit": unit_name(lim.metric),
        "warn_at": float(lim.warn_at) if lim.warn_at is not None else None,
    }


def _amounts(a: Amounts, w: Window) -> dict[str, Any]:
    return {"id": w.id, "resets_at": iso(w.end), **_plain(a)}


def _plain(a: Amounts) -> dict[str, Any]:
    return {
        "usd": natural("usd", a.usd),
        "tokens": a.tokens,
        "audio_seconds_in": natural("audio_seconds_in", a.ain),
        "audio_seconds_out": natural("audio_seconds_out", a.aout),
    }


def iso_now(now: float) -> str:
    from datetime import UTC, datetime

    return iso(datetime.fromtimestamp(now, tz=UTC))
