"""The ``budgets:`` section of a tenant policy file: its shape, its parser and its JSON Schema.

Rules of this module:
- ``parse_budgets(node, key_path)`` is the only way in. It is called lazily by the policy loader
  with the raw YAML value; every problem raises ``BudgetSpecError`` (a ``ValueError``) whose text
  starts with the key path of the offending value (``budgets.limits[2].per: expected one of ...``).
- A ``BudgetSpec`` is immutable and holds every limit already converted to ledger units
  (``relay.budget.units``), so nothing on the hot path converts or validates again.
- ``BUDGETS_SCHEMA`` describes the same shape for editors and the policy-file schema; the tests keep
  the two in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from relay.budget.units import metric_units

Metric = Literal["audio_seconds_in", "audio_seconds_out", "audio_seconds", "tokens", "usd"]
Per = Literal["session", "hour", "day", "month"]
OnExhausted = Literal["after_response", "immediately"]

METRICS: tuple[Metric, ...] = ("audio_seconds_in", "audio_seconds_out", "audio_seconds", "tokens", "usd")
PERS: tuple[Per, ...] = ("session", "hour", "day", "month")
ON_EXHAUSTED: tuple[OnExhausted, ...] = ("after_response", "immediately")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOP_KEYS = (
    "limits",
    "concurrent_sessions",
    "max_session_seconds",
    "idle_timeout_seconds",
    "on_exhausted",
    "reserve_output_tokens",
)
_LIMIT_KEYS = ("name", "metric", "per", "limit", "warn_at")


class BudgetSpecError(ValueError):
    """A value in the ``budgets`` section is wrong; ``key_path`` names it."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(f"{key_path}: {message}")
        self.key_path = key_path
        self.message = message


@dataclass(frozen=True, slots=True)
class Limit:
    """One budget: at most ``limit`` of ``metric`` per ``per`` (UTC windows, or per session)."""

    name: str
    metric: Metric
    per: Per
    limit: Decimal
    """In the metric's natural unit: seconds, tokens or USD."""
    units: int
    """``limit`` in ledger units (``relay.budget.units``), rounded down."""
    warn_at: Decimal | None = None
    """Fraction of ``limit`` (0 < x < 1) at which a warning is emitted once per window."""

    @property
    def windowed(self) -> bool:
        return self.per != "session"


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    limits: tuple[Limit, ...] = ()
    concurrent_sessions: int | None = None
    max_session_seconds: float | None = None
    idle_timeout_seconds: float | None = None
    on_exhausted: OnExhausted = "after_response"
    reserve_output_tokens: int | None = None
    """Output cap assumed for the worst-case reservation when the session sets none (default: the
    model's maximum from pricing.yaml). Lower admits more responses near a limit, at the risk of
    one response overshooting by the difference."""

    @property
    def windowed_limits(self) -> tuple[Limit, ...]:
        return tuple(lim for lim in self.limits if lim.windowed)

    @property
    def session_limits(self) -> tuple[Limit, ...]:
        return tuple(lim for lim in self.limits if not lim.windowed)

    @property
    def needs_ledger(self) -> bool:
        """True if admission needs the shared ledger: a window budget or a concurrency cap.
        Per-session budgets are enforced by the session alone."""
        return bool(self.windowed_limits) or self.concurrent_sessions is not None


def parse_budgets(node: Any, key_path: str = "budgets") -> BudgetSpec:
    """Validate the raw ``budgets`` value of a policy file and build a ``BudgetSpec``.

    Args:
        node: the value under the ``budgets`` key as ``yaml.safe_load`` produced it (None: empty).
        key_path: where the section sits, used as the prefix of every error.

    Raises:
        BudgetSpecError: the first problem found, named by its key path.
    """
    if node is None:
        return BudgetSpec()
    if not isinstance(node, dict):
        raise BudgetSpecError(key_path, "expected a mapping")
    for key in node:
        if key not in _TOP_KEYS:
            raise BudgetSpecError(
                f"{key_path}.{key}", f"unknown key (expected one of {', '.join(_TOP_KEYS)})"
            )
    limits = _parse_limits(node.get("limits"), f"{key_path}.limits")
    concurrent = _opt_int(node, "concurrent_sessions", key_path, minimum=0)
    max_len = _opt_seconds(node, "max_session_seconds", key_path)
    idle = _opt_seconds(node, "idle_timeout_seconds", key_path)
    reserve_out = _opt_int(node, "reserve_output_tokens", key_path, minimum=1)
    on_exhausted = node.get("on_exhausted", "after_response")
    if on_exhausted not in ON_EXHAUSTED:
        raise BudgetSpecError(f"{key_path}.on_exhausted", f"expected one of {', '.join(ON_EXHAUSTED)}")
    return BudgetSpec(
        limits=limits,
        concurrent_sessions=concurrent,
        max_session_seconds=max_len,
        idle_timeout_seconds=idle,
        on_exhausted=on_exhausted,
        reserve_output_tokens=reserve_out,
    )


def _parse_limits(node: Any, path: str) -> tuple[Limit, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        raise BudgetSpecError(path, "expected a list of limits")
    out: list[Limit] = []
    names: dict[str, int] = {}
    for i, item in enumerate(node):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise BudgetSpecError(where, "expected a mapping with metric, per and limit")
        for key in item:
            if key not in _LIMIT_KEYS:
                raise BudgetSpecError(
                    f"{where}.{key}", f"unknown key (expected one of {', '.join(_LIMIT_KEYS)})"
                )
        for key in ("metric", "per", "limit"):
            if key not in item:
                raise BudgetSpecError(f"{where}.{key}", "required")
        metric = item["metric"]
        if metric not in METRICS:
            raise BudgetSpecError(f"{where}.metric", f"expected one of {', '.join(METRICS)}")
        per = item["per"]
        if per not in PERS:
            raise BudgetSpecError(f"{where}.per", f"expected one of {', '.join(PERS)}")
        limit = _decimal(item["limit"], f"{where}.limit")
        if limit < 0:
            raise BudgetSpecError(f"{where}.limit", "must be >= 0")
        if metric == "tokens" and limit != limit.to_integral_value():
            raise BudgetSpecError(f"{where}.limit", "a token limit must be a whole number")
        warn_at = None
        if item.get("warn_at") is not None:
            warn_at = _decimal(item["warn_at"], f"{where}.warn_at")
            if not Decimal(0) < warn_at < Decimal(1):
                raise BudgetSpecError(f"{where}.warn_at", "must be a fraction between 0 and 1 (e.g. 0.8)")
        name = item.get("name", f"{metric}_per_{per}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise BudgetSpecError(
                f"{where}.name", "expected 1-64 characters of letters, digits, '_', '.', '-'"
            )
        if name in names:
            raise BudgetSpecError(f"{where}.name", f"duplicate budget name (also limits[{names[name]}])")
        names[name] = i
        units = int(limit * metric_units(metric))
        out.append(Limit(name, metric, per, limit, units, warn_at))
    return tuple(out)


def _decimal(value: Any, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BudgetSpecError(path, "expected a number")
    try:
        # str() first: a YAML float 0.1 becomes Decimal('0.1'), not its binary expansion.
        d = Decimal(str(value).replace("_", ""))
    except InvalidOperation:
        raise BudgetSpecError(path, "expected a number") from None
    if not d.is_finite():
        raise BudgetSpecError(path, "expected a finite number")
    return d


def _opt_int(node: dict[str, Any], key: str, path: str, *, minimum: int) -> int | None:
    value = node.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BudgetSpecError(f"{path}.{key}", "expected a whole number")
    if value < minimum:
        raise BudgetSpecError(f"{path}.{key}", f"must be >= {minimum}")
    return value


def _opt_seconds(node: dict[str, Any], key: str, path: str) -> float | None:
    value = node.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BudgetSpecError(f"{path}.{key}", "expected a number of seconds")
    if value <= 0:
        raise BudgetSpecError(f"{path}.{key}", "must be > 0")
    return float(value)


_LIMIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["metric", "per", "limit"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": _NAME.pattern,
            "description": "Unique name; used in errors and metrics.",
        },
        "metric": {"enum": list(METRICS)},
        "per": {"enum": list(PERS), "description": "session, or a UTC calendar window."},
        "limit": {"type": "number", "minimum": 0, "description": "Seconds, tokens or USD."},
        "warn_at": {"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    },
}

BUDGETS_SCHEMA: dict[str, Any] = {
    "$comment": "The budgets section of a tenant policy file (docs/budgets.md).",
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "limits": {"type": ["array", "null"], "items": _LIMIT_SCHEMA},
        "concurrent_sessions": {"type": ["integer", "null"], "minimum": 0},
        "max_session_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "idle_timeout_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "on_exhausted": {"enum": list(ON_EXHAUSTED)},
        "reserve_output_tokens": {"type": ["integer", "null"], "minimum": 1},
    },
}

__all__ = [
    "BUDGETS_SCHEMA",
    "BudgetSpec",
    "BudgetSpecError",
    "Limit",
    "Metric",
    "Per",
    "parse_budgets",
]
