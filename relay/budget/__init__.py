"""Per-tenant budgets and metering (docs/budgets.md).

- ``spec``: the ``budgets:`` section of a tenant policy (``parse_budgets``, ``BUDGETS_SCHEMA``).
- ``meter`` / ``pricing``: exact audio seconds, tokens and USD of a session.
- ``guard``: the per-session ``SessionGuard`` (sans-I/O); ``service``: admission, ledger, leases.
- ``ledger`` / ``redis_ledger``: the stores (``memory`` or ``redis://``).
"""

from relay.budget.pricing import Pricing
from relay.budget.service import Admission, BudgetService
from relay.budget.spec import BUDGETS_SCHEMA, BudgetSpec, BudgetSpecError, Limit, parse_budgets

__all__ = [
    "BUDGETS_SCHEMA",
    "Admission",
    "BudgetService",
    "BudgetSpec",
    "BudgetSpecError",
    "Limit",
    "Pricing",
    "parse_budgets",
]
