"""What one session knows about its budgets: its own usage, the tenant's windows, its reservations.

Rules of this module:
- Plain integer counters in ledger units, no I/O. The guard adds to them on the hot path
  (``p_*``/``s_*`` attributes directly, no allocation) and takes the pending part when it writes
  to the ledger.
- ``pending`` is usage not yet written to the ledger; ``session`` is all of this session's usage.
- ``known`` is the tenant's window usage as last reported by the ledger. Within one window usage
  only grows, so a late answer never lowers it (``learn``); a new window replaces it.
- Local decisions (the store is down, or a check before asking it) use ``known + pending`` and
  the reservations last seen, which is what this replica can know without the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.budget import enforce as E
from relay.budget.ledger import LedgerView, Used
from relay.budget.spec import Limit
from relay.budget.units import ZERO, Amounts


class Tally:
    __slots__ = (
        "p_usd", "p_tok", "p_ain", "p_aout", "s_usd", "s_tok", "s_ain", "s_aout",
        "known", "known_ids", "known_reserved", "own",
    )  # fmt: skip

    def __init__(self, view: LedgerView, window_ids: tuple[str, str, str]) -> None:
        self.p_usd = self.p_tok = self.p_ain = self.p_aout = 0
        self.s_usd = self.s_tok = self.s_ain = self.s_aout = 0
        self.known: Used = view.used
        self.known_ids = window_ids
        self.known_reserved = view.reserved
        self.own: dict[str, Amounts] = {}
        """This session's reservations still held in the ledger, by id."""

    def add(self, *, usd: int = 0, tokens: int = 0) -> None:
        self.p_usd += usd
        self.s_usd += usd
        self.p_tok += tokens
        self.s_tok += tokens

    @property
    def has_pending(self) -> bool:
        return bool(self.p_usd or self.p_tok or self.p_ain or self.p_aout)

    def take_pending(self) -> Amounts:
        amount = Amounts(self.p_usd, self.p_tok, self.p_ain, self.p_aout)
        self.p_usd = self.p_tok = self.p_ain = self.p_aout = 0
        return amount

    @property
    def session(self) -> Amounts:
        return Amounts(self.s_usd, self.s_tok, self.s_ain, self.s_aout)

    def window_view(self) -> Used:
        """The tenant's windows as this replica sees them: last known plus unwritten usage."""
        p = Amounts(self.p_usd, self.p_tok, self.p_ain, self.p_aout)
        if not p:
            return self.known
        k = self.known
        return (k[0] + p, k[1] + p, k[2] + p)

    def learn(self, used: Used, ids: tuple[str, str, str]) -> None:
        if ids == self.known_ids:
            k = self.known
            self.known = (_max(k[0], used[0]), _max(k[1], used[1]), _max(k[2], used[2]))
        else:
            self.known, self.known_ids = used, ids

    def assume_written(self, amount: Amounts) -> None:
        """The ledger could not take ``amount``: count it in ``known`` as if it had."""
        k = self.known
        self.known = (k[0] + amount, k[1] + amount, k[2] + amount)

    def local_failure(
        self, session_limits: Sequence[Limit], window_limits: Sequence[Limit], amount: Amounts
    ) -> Limit | None:
        """The first limit ``amount`` would break, judged on what this replica knows."""
        own = ZERO
        for a in self.own.values():
            own = own + a
        lim = E.session_failure(session_limits, self.session, own, amount)
        if lim is None:
            lim = E.window_failure(window_limits, self.window_view(), self.known_reserved, amount)
        return lim


def _max(a: Amounts, b: Amounts) -> Amounts:
    return Amounts(max(a.usd, b.usd), max(a.tokens, b.tokens), max(a.ain, b.ain), max(a.aout, b.aout))
