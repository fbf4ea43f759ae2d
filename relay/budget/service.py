"""``BudgetService``: the process-wide side of budgets (admission, ledger, leases, reconcile).

Rules of this module:
- One per relay process, created by the server with ``BudgetService.create``. It owns the ledger
  store, a heartbeat task renewing the slot leases of the sessions it runs, and a reconcile task
  that writes usage the store could not take when it was down.
- Admission (``admit``) happens before the WebSocket upgrade: a tenant at its concurrency limit or
  with an exhausted windowed budget gets ``HandshakeRejected(429)`` with ``Retry-After``.
- Store unavailable (``budgets.on_store_unavailable``):
    ``refuse_new`` (default) → new sessions of tenants with budgets get 503
      ``budget_store_unavailable``; live sessions go on, decided on what this replica knows
      (their session budgets and the window totals they last saw), and their usage is queued and
      written to the store when it answers again;
    ``allow`` → new sessions are admitted the same degraded way.
  Tenants without budgets are never refused because of the store.
- Ledger writes run in tasks the service owns (``asyncio.shield``), so a session ending in the
  middle of a write cannot lose or half-apply it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.budget import enforce as E
from relay.budget.guard import BudgetGuard
from relay.budget.ledger import Check, LedgerStore, LedgerView, MemoryLedger, StoreUnavailable, Used
from relay.budget.pricing import Pricing
from relay.budget.report import set_gauges
from relay.budget.spec import BudgetSpec, Limit
from relay.budget.units import Amounts
from relay.budget.usage import usage_report
from relay.budget.windows import Window, window, windows
from relay.config import BudgetsConfig
from relay.contracts import SessionInfo
from relay.errors import HandshakeRejected
from relay.metrics import RelayMetrics

log = logging.getLogger("relay.budget")

CONCURRENCY_RETRY_AFTER = 2
"""Seconds a client refused for concurrency is told to wait (sessions end at any time)."""
STORE_RETRY_AFTER = 5


@dataclass(slots=True)
class Admission:
    """What ``admit`` decided for one session; handed to ``guard`` and held until ``close``."""

    tenant: str
    session_id: str
    spec: BudgetSpec | None
    view: LedgerView = field(default_factory=LedgerView)
    window_ids: tuple[str, str, str] = ("", "", "")
    slot: bool = False
    """True while the store holds a lease for this session."""
    degraded: bool = False
    """Admitted without the store (it was unavailable and ``on_store_unavailable`` allowed it)."""
    created: float = 0.0
    guarded: bool = False


@dataclass(slots=True)
class ReserveOutcome:
    failed: Limit | None = None
    view: LedgerView | None = None
    """None: the store did not answer; the guard decides on local knowledge."""
    window_ids: tuple[str, str, str] = ("", "", "")


@dataclass(slots=True)
class _Unwritten:
    tenant: str
    rid: str
    amount: Amounts
    wins: tuple[Window, Window, Window]
    at: float


class BudgetService:
    def __init__(
        self,
        cfg: BudgetsConfig,
        metrics: RelayMetrics,
        pricing: Pricing,
        store: LedgerStore,
        *,
        wall: Callable[[], float] = time.time,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        tick_seconds: float = 1.0,
        flush_seconds: float = 5.0,
        reconcile_seconds: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.pricing = pricing
        self.store = store
        self.wall = wall
        self.mono_ns = mono_ns
        self.tick_seconds = tick_seconds
        self.flush_seconds = flush_seconds
        self.reconcile_seconds = reconcile_seconds
        self.lease_seconds = cfg.slot_lease_seconds
        self._admissions: dict[str, Admission] = {}
        self._guards: dict[str, BudgetGuard] = {}
        self._unwritten: deque[_Unwritten] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    @classmethod
    async def create(
        cls,
        cfg: BudgetsConfig,
        metrics: RelayMetrics,
        *,
        pricing: Pricing | None = None,
        store: LedgerStore | None = None,
        **options: Any,
    ) -> BudgetService:
        """Build the service from ``budgets.*`` and start its heartbeat and reconcile tasks.

        Raises:
            ConfigError: an unreadable or malformed pricing file.
        """
        if pricing is None:
            pricing = Pricing.load(cfg.pricing or None)
        if store is None:
            if cfg.store == "memory":
                store = MemoryLedger()
            else:
                from relay.budget.redis_ledger import RedisLedger

                store = RedisLedger(cfg.store)
        service = cls(cfg, metrics, pricing, store, **options)
        service._loops = [
            asyncio.create_task(service._heartbeat(), name="budget-heartbeat"),
            asyncio.create_task(service._reconcile(), name="budget-reconcile"),
        ]
        return service

    # -- the server's calls ------------------------------------------------------------------

    async def admit(self, info: SessionInfo, spec: BudgetSpec | None) -> Admission:
        """Let a session in or refuse it before the upgrade.

        Raises:
            HandshakeRejected: 429 ``concurrency_limit`` or ``budget_exceeded`` (with Retry-After),
                or 503 ``budget_store_unavailable`` under ``on_store_unavailable: refuse_new``.
        """
        now = self.wall()
        wins = windows(now)
        adm = Admission(info.tenant, info.session_id, spec, window_ids=_ids(wins), created=time.monotonic())
        if spec is None or not spec.needs_ledger:
            return adm
        tenant = info.tenant
        try:
            ok, live = await self.store.acquire_slot(
                tenant, info.session_id, spec.concurrent_sessions, self.lease_seconds
            )
            if not ok:
                self.metrics.budget_rejections_total.labels(tenant, "concurrent_sessions").inc()
                raise HandshakeRejected(
                    429,
                    E.concurrency_message(tenant, live),
                    code="concurrency_limit",
                    error_type="rate_limit_error",
                    headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER)},
                )
            adm.slot = True
            adm.view = await self.store.view(tenant, wins)
        except StoreUnavailable as exc:
            self.metrics.budget_store_errors_total.labels("admit").inc()
            if adm.slot:
                self._spawn(self._release_slot(adm))
            if self.cfg.on_store_unavailable == "refuse_new":
                log.warning("budget store unavailable; refusing a new session", extra={"tenant": tenant})
                raise HandshakeRejected(
                    503,
                    "The budget ledger is unavailable, so budgets cannot be enforced; try again shortly.",
                    code="budget_store_unavailable",
                    error_type="server_error",
                    headers={"Retry-After": str(STORE_RETRY_AFTER)},
                ) from exc
            adm.slot, adm.degraded = False, True
            self._admissions[info.session_id] = adm
            return adm
        self._concurrency_gauges(tenant, spec, adm.view.active)
        set_gauges(self.metrics, tenant, spec.windowed_limits, adm.view.used)
        used = adm.view.used
        text = ""
        lim = E.exhausted(spec.limits, used, Amounts())
        if lim is not None:
            text, _, retry = E.describe(lim, E.used_of(lim, used, Amounts()), now)
        elif info.intent != "transcription":
            # Refuse now what the first response would be refused anyway: the tenant's remaining
            # window budget cannot cover one response of a fresh session (no context yet).
            prices = self.pricing.model(info.model)
            cap = E.output_cap(prices, None, None, spec, self.pricing.reserve_output_tokens)
            first = E.response_bound(prices, E.input_bound(prices, 0, 0, 0), cap)
            lim = E.window_failure(spec.windowed_limits, used, Amounts(), first)
            if lim is not None:
                u = E.used_of(lim, used, Amounts())
                text = E.refusal_text(lim, u, 0, first.metric(lim.metric), now)
                retry = window(lim.per, now).seconds_left(now)
        if lim is not None:
            self._spawn(self._release_slot(adm))
            self.metrics.budget_rejections_total.labels(tenant, lim.name).inc()
            raise HandshakeRejected(
                429,
                text,
                code="budget_exceeded",
                error_type="rate_limit_error",
                headers={"Retry-After": str(retry)} if retry else {},
            )
        self._admissions[info.session_id] = adm
        return adm

    def guard(self, info: SessionInfo, spec: BudgetSpec | None, admission: Admission) -> BudgetGuard:
        admission.guarded = True
        guard = BudgetGuard(self, info, spec, admission, self.pricing.model(info.model))
        self._guards[info.session_id] = guard
        return guard

    async def usage(self, tenant: str, spec: BudgetSpec | None) -> dict[str, Any]:
        """Usage and what is left of each budget of ``tenant`` (the admin endpoint's body)."""
        now = self.wall()
        wins = windows(now)
        available = True
        try:
            view = await self.store.view(tenant, wins)
        except StoreUnavailable:
            self.metrics.budget_store_errors_total.labels("usage").inc()
            view, available = LedgerView(), False
        for u in self._unwritten:  # usage this replica still owes the store counts too
            if u.tenant == tenant:
                view.used = _add_same_windows(view.used, wins, u)
        guards = [g for g in self._guards.values() if g.info.tenant == tenant]
        if spec is not None:
            set_gauges(self.metrics, tenant, spec.windowed_limits, view.used)
            if available:
                self._concurrency_gauges(tenant, spec, view.active)
        report = usage_report(tenant, spec, view, wins, now, guards)
        report["store"] = self.store.name
        report["store_available"] = available
        report["unwritten"] = sum(1 for u in self._unwritten if u.tenant == tenant)
        return report

    async def aclose(self) -> None:
        """Stop the loops, wait for ledger writes in flight, try once more to write what is owed."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        await self._write_unwritten()
        if self._unwritten:
            log.warning(
                "budget usage not written to the store at shutdown", extra={"entries": len(self._unwritten)}
            )
        await self.store.aclose()

    # -- the guards' calls (awaited inside their thunks) --------------------------------------

    async def reserve(
        self, adm: Admission, rid: str, amount: Amounts, checks: Sequence[Check]
    ) -> ReserveOutcome:
        wins = windows(self.wall())
        if not adm.slot:
            return ReserveOutcome()
        try:
            res = await self.store.reserve(adm.tenant, adm.session_id, rid, amount, checks, wins)
        except StoreUnavailable:
            self.metrics.budget_store_errors_total.labels("reserve").inc()
            return ReserveOutcome()
        failed = None
        if not res.ok and adm.spec is not None:
            failed = adm.spec.windowed_limits[res.failed]
        return ReserveOutcome(failed, res.view, _ids(wins))

    async def commit(
        self, adm: Admission, rid: str, amount: Amounts
    ) -> tuple[Used | None, tuple[str, str, str]]:
        """Settle reservation ``rid`` and add ``amount``; (None, ids) if it was queued instead."""
        now = self.wall()
        wins = windows(now)
        entry = _Unwritten(adm.tenant, rid, amount, wins, now)
        used = await asyncio.shield(self._spawn(self._write(entry)))
        return used, _ids(wins)

    async def release(self, adm: Admission, rid: str) -> None:
        if adm.slot:
            try:
                await self.store.release(adm.tenant, rid)
            except StoreUnavailable:
                self.metrics.budget_store_errors_total.labels("release").inc()

    def finish(self, adm: Admission, amount: Amounts, rids: Sequence[str]) -> None:
        """A session ended: write its last usage, drop its reservations, free its slot."""
        self._admissions.pop(adm.session_id, None)
        self._guards.pop(adm.session_id, None)
        now = self.wall()
        entry = _Unwritten(adm.tenant, "", amount, windows(now), now) if amount else None

        async def run() -> None:
            if entry is not None:
                await self._write(entry)
            for rid in rids:
                await self.release(adm, rid)
            await self._release_slot(adm)

        self._spawn(run())

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _write(self, u: _Unwritten) -> Used | None:
        try:
            return await self.store.commit(u.tenant, u.rid, u.amount, u.wins, u.at)
        except StoreUnavailable:
            self.metrics.budget_store_errors_total.labels("commit").inc()
            if u.amount or u.rid:
                self._unwritten.append(u)
            return None

    async def _write_unwritten(self) -> None:
        while self._unwritten:
            u = self._unwritten[0]
            try:
                await self.store.commit(u.tenant, u.rid, u.amount, u.wins, u.at)
            except StoreUnavailable:
                self.metrics.budget_store_errors_total.labels("reconcile").inc()
                return
            self._unwritten.popleft()

    async def _release_slot(self, adm: Admission) -> None:
        if not adm.slot:
            return
        try:
            await self.store.release_slot(adm.tenant, adm.session_id)
            adm.slot = False
        except StoreUnavailable:
            self.metrics.budget_store_errors_total.labels("release_slot").inc()

    async def _heartbeat(self) -> None:
        """Renew the leases of every live session; re-take leases the store lost or never gave."""
        while True:
            await asyncio.sleep(max(0.05, self.lease_seconds / 3))
            stale = time.monotonic() - 2 * self.lease_seconds - 60
            by_tenant: dict[str, list[Admission]] = {}
            for sid, adm in list(self._admissions.items()):
                if not adm.guarded and adm.created < stale:
                    self._admissions.pop(sid, None)  # admitted but never run: let its lease lapse
                    continue
                by_tenant.setdefault(adm.tenant, []).append(adm)
            for tenant, adms in by_tenant.items():
                try:
                    await self.store.renew_slots(tenant, [a.session_id for a in adms], self.lease_seconds)
                except StoreUnavailable:
                    self.metrics.budget_store_errors_total.labels("renew").inc()
                    continue
                for a in adms:
                    if a.session_id in self._admissions:
                        a.slot = True
                    else:  # it ended while we renewed: do not leave the renewed lease behind
                        a.slot = True
                        self._spawn(self._release_slot(a))

    async def _reconcile(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_seconds)
            if self._unwritten:
                await self._write_unwritten()

    def _concurrency_gauges(self, tenant: str, spec: BudgetSpec, active: int) -> None:
        if spec.concurrent_sessions is None:
            return
        limit = spec.concurrent_sessions
        self.metrics.budget_remaining.labels(tenant, "concurrent_sessions").set(max(0, limit - active))
        self.metrics.budget_used_ratio.labels(tenant, "concurrent_sessions").set(
            active / limit if limit else 1.0
        )


def _add_same_windows(used: Used, wins: Sequence[Window], u: _Unwritten) -> Used:
    """``used`` plus ``u.amount`` in each window that is the one ``u`` was metered in."""
    out = [x + u.amount if w.id == own.id else x for x, w, own in zip(used, wins, u.wins, strict=True)]
    return (out[0], out[1], out[2])


def _ids(wins: Sequence[Window]) -> tuple[str, str, str]:
    return (wins[0].id, wins[1].id, wins[2].id)
