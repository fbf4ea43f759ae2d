"""``Enforcer``: turns one session's budget decisions into what the client sees.

Rules of this module:
- Sans-I/O. It reads the session's ``Tally`` and returns actions: an ``error`` event (code
  ``budget_exceeded``, ``param`` the budget's name, the message naming its use and reset time), then
  ``Close(1008)``; for a refused auto-response also a ``response.cancel`` upstream first.
- ``on_exhausted: after_response`` waits while a response is in flight (the caller says so);
  ``immediately`` ends at once. Once closing, it answers nothing more.
- Every decision leaves an audit record (kind ``budget``: ``warn``, ``exhausted``, ``reject``) for
  ``drain_audit`` and moves ``relay_budget_rejections_total`` / ``relay_budget_warnings_total``.
- A warning fires once per budget and window, when an increment crosses ``warn_at``. Across
  replicas the atomic ledger increments make exactly one commit see the crossing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from relay.actions import Action, Close, Send
from relay.budget import enforce as E
from relay.budget.ledger import Used
from relay.budget.report import SessionReport
from relay.budget.spec import BudgetSpec, Limit
from relay.budget.tally import Tally
from relay.budget.units import Amounts, natural
from relay.events import C2U, U2C, Direction, Event
from relay.verdicts import AuditRecord

NOTHING: tuple[Action, ...] = ()


class Enforcer:
    def __init__(
        self, spec: BudgetSpec | None, tally: Tally, report: SessionReport, wall: Callable[[], float]
    ) -> None:
        self.limits = spec.limits if spec else ()
        self.session_limits = spec.session_limits if spec else ()
        self.window_limits = spec.windowed_limits if spec else ()
        self.immediately = spec is not None and spec.on_exhausted == "immediately"
        self.tally = tally
        self.report = report
        self.wall = wall
        self.exhausted: Limit | None = None
        self.closing = False
        self.audit: list[AuditRecord] = []
        self._warned: set[tuple[str, str]] = set()

    def local_failure(self, amount: Amounts) -> Limit | None:
        return self.tally.local_failure(self.session_limits, self.window_limits, amount)

    def check_audio(self, limits: Sequence[Limit], in_flight: bool) -> Sequence[Action] | None:
        """After metered audio: ``None`` to forward the event, else what replaces it."""
        if self.closing or self.exhausted is not None:
            return None
        lim = E.exhausted(limits, self.tally.window_view(), self.tally.session)
        if lim is None:
            return None
        return self.exhaust(lim, in_flight) or None

    def audio_room(self, limits: Sequence[Limit]) -> int:
        """The least headroom (ticks) left under ``limits``; 0 when one is spent or closing."""
        if self.closing or self.exhausted is not None or not limits:
            return 0
        used, session = self.tally.window_view(), self.tally.session
        return max(0, min(lim.units - E.used_of(lim, used, session) for lim in limits))

    def exhaust(self, lim: Limit, in_flight: bool) -> Sequence[Action]:
        """A budget ran out: end now, or after the responses in flight (``on_exhausted``)."""
        if self.closing:
            return NOTHING
        if self.exhausted is None:
            self.exhausted = lim
            self._audit(lim, "exhausted", self._used(lim))
            self.report.rejected(lim.name)
        if self.immediately or not in_flight:
            return self._end(lim)
        return NOTHING

    def refuse(
        self, lim: Limit, amount: Amounts, event_id: str | None, in_flight: bool, cancel: str = ""
    ) -> Sequence[Action]:
        """A response may not start: ``lim`` cannot cover its worst case (or is spent)."""
        used = self._used(lim)
        self._audit(lim, "reject", used)
        self.report.rejected(lim.name)
        reserved = self.tally.known_reserved.metric(lim.metric) if lim.windowed else 0
        text = E.refusal_text(lim, used, reserved, amount.metric(lim.metric), self.wall())
        error = synth(U2C, E.budget_error(text, lim, event_id))
        if cancel:
            self.closing = True
            stop = synth(C2U, {"type": "response.cancel", "response_id": cancel})
            return (stop, error, _close(lim))
        if self.exhausted is None:
            self.exhausted = lim
        if not self.immediately and in_flight:
            return (error,)
        self.closing = True
        return (error, _close(lim))

    def after_commit(self, amount: Amounts, used: Used | None, in_flight: bool) -> Sequence[Action]:
        """Warnings, gauges and exhaustion once usage went to the ledger (``used``: None if not)."""
        session = self.tally.session
        if used is not None:
            before = (used[0] - amount, used[1] - amount, used[2] - amount)
            for lim in self.window_limits:
                i = E.PERIOD_INDEX[lim.per]
                if E.crossed(lim, before[i].metric(lim.metric), used[i].metric(lim.metric)):
                    self._warn(lim, used[i].metric(lim.metric))
            self.report.gauges(self.window_limits, used)
        for lim in self.session_limits:
            value = session.metric(lim.metric)
            if E.crossed(lim, value - amount.metric(lim.metric), value):
                self._warn(lim, value)
        if self.closing:
            return NOTHING
        ran_out = self.exhausted or E.exhausted(self.limits, self.tally.window_view(), session)
        return NOTHING if ran_out is None else self.exhaust(ran_out, in_flight)

    def drain_audit(self) -> Sequence[AuditRecord]:
        if not self.audit:
            return ()  # the common case, on every event: no allocation
        out = list(self.audit)
        self.audit.clear()  # the same list object: the session core holds it as ``pending_audit``
        return out

    def _end(self, lim: Limit) -> Sequence[Action]:
        self.closing = True
        text, _, _ = E.describe(lim, self._used(lim), self.wall())
        return (synth(U2C, E.budget_error(text, lim)), _close(lim))

    def _used(self, lim: Limit) -> int:
        return E.used_of(lim, self.tally.window_view(), self.tally.session)

    def _warn(self, lim: Limit, used: int) -> None:
        key = (lim.name, self.tally.known_ids[E.PERIOD_INDEX[lim.per]] if lim.windowed else "session")
        if key in self._warned:
            return
        self._warned.add(key)
        self._audit(lim, "warn", used)
        self.report.warned(lim.name)

    def _audit(self, lim: Limit, action: str, used: int) -> None:
        detail: dict[str, Any] = {
            "metric": lim.metric,
            "per": lim.per,
            "limit": float(lim.limit),
            "used": natural(lim.metric, used),
            "used_ratio": round(E.ratio(lim, used), 6),
        }
        if lim.warn_at is not None:
            detail["warn_at"] = float(lim.warn_at)
        self.audit.append(AuditRecord("budget", lim.name, action, detail=detail))


def synth(to: Direction, payload: dict[str, Any]) -> Send:
    """A relay-made event sent towards ``to``, recorded like any other."""
    text = orjson.dumps(payload).decode()
    return Send(to, text, Event(to, str(payload["type"]), text, -1, 0, payload))


def _close(lim: Limit) -> Close:
    return Close(1008, f"budget exceeded: {lim.name}"[:120], outcome="budget")
