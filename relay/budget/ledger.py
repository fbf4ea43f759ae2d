"""The budget ledger: what a tenant used per window, what is reserved, which sessions hold slots.

Rules of this module:
- ``LedgerStore`` is the interface; ``MemoryLedger`` (one process) and ``RedisLedger``
  (``relay.budget.redis_ledger``, shared by replicas) implement it with the same semantics, and
  one test suite runs against both.
- Every counter is an integer in ledger units (``relay.budget.units``). The hour, day and month
  windows are always updated together, whatever the tenant's budgets say, so a budget added later
  or the usage endpoint sees the whole window.
- Concurrency slots are leases: a slot expires ``lease`` seconds after it was last taken or
  renewed, so a replica that dies cannot hold a tenant's slots for longer than that.
- A reservation belongs to a session and lives only while that session's slot lives: a crashed
  replica's reservations vanish with its leases instead of blocking the tenant.
- A check fails when ``used >= limit`` or ``used + reserved + amount > limit`` (``first_failure``).
- A store that cannot answer raises ``StoreUnavailable``; callers decide what that means.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relay.budget.units import ZERO, Amounts
from relay.budget.windows import Window

Used = tuple[Amounts, Amounts, Amounts]
"""Usage in the hour, day and month windows (``windows.PERIODS`` order)."""


class StoreUnavailable(Exception):
    """The ledger store could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Check:
    """One windowed limit, as the store evaluates it: ``window`` indexes ``PERIODS``."""

    window: int
    metric: str
    units: int


@dataclass(slots=True)
class LedgerView:
    used: Used = (ZERO, ZERO, ZERO)
    reserved: Amounts = ZERO
    active: int = 0
    """Live slots (sessions) of the tenant, all replicas."""


@dataclass(slots=True)
class ReserveResult:
    ok: bool
    failed: int
    """Index into the checks of the first limit that failed; -1 when ``ok``."""
    view: LedgerView = field(default_factory=LedgerView)


def first_failure(checks: Sequence[Check], used: Used, reserved: Amounts, amount: Amounts) -> int:
    for i, c in enumerate(checks):
        u = used[c.window].metric(c.metric)
        if u >= c.units or u + reserved.metric(c.metric) + amount.metric(c.metric) > c.units:
            return i
    return -1


class LedgerStore(Protocol):
    name: str

    async def acquire_slot(
        self, tenant: str, session_id: str, limit: int | None, lease_s: float
    ) -> tuple[bool, int]:
        """Take (or renew) a slot unless ``limit`` live slots exist; returns (ok, live count)."""

    async def renew_slots(self, tenant: str, session_ids: Sequence[str], lease_s: float) -> None:
        """Extend these sessions' leases (re-creating any the store lost)."""

    async def release_slot(self, tenant: str, session_id: str) -> None: ...

    async def reserve(
        self,
        tenant: str,
        session_id: str,
        rid: str,
        amount: Amounts,
        checks: Sequence[Check],
        wins: Sequence[Window],
    ) -> ReserveResult:
        """Atomically check ``checks`` with ``amount`` added and, if all pass, hold ``amount``."""

    async def commit(
        self, tenant: str, rid: str, amount: Amounts, wins: Sequence[Window], now: float
    ) -> Used:
        """Drop reservation ``rid`` (may be "") and add ``amount`` to the windows; returns usage after."""

    async def release(self, tenant: str, rid: str) -> None: ...

    async def view(self, tenant: str, wins: Sequence[Window]) -> LedgerView: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Tenant:
    slots: dict[str, float] = field(default_factory=dict)
    reservations: dict[str, tuple[str, Amounts]] = field(default_factory=dict)
    windows: dict[str, tuple[Amounts, float]] = field(default_factory=dict)
    """window id → (usage, expiry on the wall clock)"""


class MemoryLedger:
    """The in-process store: one relay process, no network, the same semantics as Redis."""

    name = "memory"

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._tenants: dict[str, _Tenant] = {}

    def _t(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        return t

    def _live(self, t: _Tenant) -> dict[str, float]:
        now = self._clock()
        for sid in [s for s, exp in t.slots.items() if exp <= now]:
            del t.slots[sid]
        return t.slots

    def _reserved(self, t: _Tenant) -> Amounts:
        live = self._live(t)
        total = ZERO
        for rid, (sid, amount) in list(t.reservations.items()):
            if sid in live:
                total = total + amount
            else:
                del t.reservations[rid]
        return total

    def _used(self, t: _Tenant, wins: Sequence[Window]) -> Used:
        wall = self._wall()
        out = []
        for w in wins:
            entry = t.windows.get(w.id)
            if entry is not None and entry[1] <= wall:
                del t.windows[w.id]
                entry = None
            out.append(entry[0] if entry else ZERO)
        return (out[0], out[1], out[2])

    async def acquire_slot(
        self, tenant: str, session_id: str, limit: int | None, lease_s: float
    ) -> tuple[bool, int]:
        t = self._t(tenant)
        live = self._live(t)
        if session_id not in live and limit is not None and len(live) >= limit:
            return False, len(live)
        live[session_id] = self._clock() + lease_s
        return True, len(live)

    async def renew_slots(self, tenant: str, session_ids: Sequence[str], lease_s: float) -> None:
        t = self._t(tenant)
        exp = self._clock() + lease_s
        for sid in session_ids:
            t.slots[sid] = exp

    async def release_slot(self, tenant: str, session_id: str) -> None:
        self._t(tenant).slots.pop(session_id, None)

    async def reserve(
        self,
        tenant: str,
        session_id: str,
        rid: str,
        amount: Amounts,
        checks: Sequence[Check],
        wins: Sequence[Window],
    ) -> ReserveResult:
        t = self._t(tenant)
        reserved = self._reserved(t)
        used = self._used(t, wins)
        failed = first_failure(checks, used, reserved, amount)
        if failed < 0:
            t.reservations[rid] = (session_id, amount)
        return ReserveResult(failed < 0, failed, LedgerView(used, reserved, len(t.slots)))

    async def commit(
        self, tenant: str, rid: str, amount: Amounts, wins: Sequence[Window], now: float
    ) -> Used:
        t = self._t(tenant)
        if rid:
            t.reservations.pop(rid, None)
        used = self._used(t, wins)
        after = []
        for w, u in zip(wins, used, strict=True):
            total = u + amount
            if amount or w.id in t.windows:
                t.windows[w.id] = (total, now + w.ttl_seconds(now))
            after.append(total)
        return (after[0], after[1], after[2])

    async def release(self, tenant: str, rid: str) -> None:
        self._t(tenant).reservations.pop(rid, None)

    async def view(self, tenant: str, wins: Sequence[Window]) -> LedgerView:
        t = self._t(tenant)
        reserved = self._reserved(t)
        return LedgerView(self._used(t, wins), reserved, len(t.slots))

    async def aclose(self) -> None:
        return None
