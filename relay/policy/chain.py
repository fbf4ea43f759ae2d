"""The policy chain bound to one session: the ``SessionPolicy`` the session core calls.

Rules of this module:
- Routing is precomputed: ``wants()`` is a set lookup, and the handlers for a (direction, type)
  pair are resolved once and cached. Events no policy subscribes to (audio) never enter ``apply``.
- Policies run in file order. ``Forward(event)`` replaces the event for the policies after it and
  for the wire; the first verdict that is not a ``Forward`` ends the chain.
- Fail closed: a policy that raises ends the session with ``Terminate(1011)`` and an ``error``
  event; ``relay_policy_errors_total`` counts it and the audit trail names the policy. From then
  on every event is routed into the chain and terminates, so nothing slips past a broken policy.
- The recording side (``recording_events``) is separate: policies that target the recording
  rewrite a copy of what was forwarded; the live event is never touched there.
- No I/O, no awaits, no per-event logging (the one log line is on the failure path).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from relay.contracts import SessionInfo
from relay.events import Direction, Event, error_event
from relay.metrics import RelayMetrics
from relay.policy.base import AuditSink, Handler, Policy, SessionContext, Subscription
from relay.verdicts import FORWARD_UNCHANGED, AuditRecord, Forward, Terminate, Verdict

log = logging.getLogger("relay.policy")

_ROUTE_CACHE_MAX = 512
"""Client frames may carry any ``type``: cache routes for that many pairs, compute the rest."""

_Key = tuple[Direction, str]
_Route = tuple[tuple[Handler, tuple[Subscription, ...]], ...]


class _Routing:
    """Which handlers see which (direction, type), for one side (live or recording)."""

    __slots__ = ("explicit", "wild_except", "entries", "cache")

    def __init__(self, entries: list[tuple[Handler, tuple[Subscription, ...]]]) -> None:
        self.entries = entries
        # Per direction (indexed by the Direction int): the types some policy names explicitly.
        explicit: tuple[set[str], set[str]] = (set(), set())
        # Per direction: None when no policy wants "everything"; else the types all such
        # policies exclude (a type is wanted unless every wildcard policy excludes it).
        self.wild_except: list[frozenset[str] | None] = [None, None]
        for _, subs in entries:
            for sub in subs:
                if sub.everything:
                    cur = self.wild_except[sub.direction]
                    self.wild_except[sub.direction] = sub.exclude if cur is None else cur & sub.exclude
                else:
                    explicit[sub.direction].update(sub.types)
        self.explicit = (frozenset(explicit[0]), frozenset(explicit[1]))
        self.cache: dict[_Key, tuple[Handler, ...]] = {}

    def wants(self, direction: Direction, event_type: str) -> bool:
        if event_type in self.explicit[direction]:
            return True
        ex = self.wild_except[direction]
        return ex is not None and event_type not in ex

    def handlers(self, direction: Direction, event_type: str) -> tuple[Handler, ...]:
        key = (direction, event_type)
        found = self.cache.get(key)
        if found is None:
            found = tuple(
                h for h, subs in self.entries if any(s.matches(direction, event_type) for s in subs)
            )
            if len(self.cache) < _ROUTE_CACHE_MAX:
                self.cache[key] = found
        return found


class PolicyChain:
    """``SessionPolicy`` for one session (see ``relay.contracts``)."""

    def __init__(
        self,
        policies: Sequence[Policy],
        info: SessionInfo,
        metrics: RelayMetrics | None,
        *,
        version: str = "",
    ) -> None:
        self.info = info
        self.version = version
        self._metrics = metrics
        self._sink = AuditSink(info.tenant, metrics)
        self._pending_audit: list[AuditRecord] = []
        ctx = SessionContext(info, metrics)
        live: list[tuple[Handler, tuple[Subscription, ...]]] = []
        rec: list[tuple[Handler, tuple[Subscription, ...]]] = []
        self._handlers: list[Handler] = []
        for policy in policies:
            handler = policy.bind(ctx)
            handler.policy_id = policy.policy_id
            self._handlers.append(handler)
            subs = tuple(policy.subscriptions())
            if subs:
                live.append((handler, subs))
            rsubs = tuple(policy.recording_subscriptions())
            if rsubs:
                rec.append((handler, rsubs))
        self._live = _Routing(live)
        self._rec = _Routing(rec)
        self._fault: str | None = None

    # -- live path -------------------------------------------------------------------------

    def wants(self, direction: Direction, event_type: str) -> bool:
        # Inlined routing lookup: this runs for every event, audio included.
        live = self._live
        if event_type in live.explicit[direction]:
            return True
        ex = live.wild_except[direction]
        return ex is not None and event_type not in ex

    def apply(self, event: Event, audit: list[AuditRecord]) -> Verdict:
        if self._fault is not None:
            return self._terminate()
        handlers = self._live.handlers(event.direction, event.type)
        if not handlers:
            return FORWARD_UNCHANGED
        sink = self._sink
        sink.records = audit
        if self._pending_audit:
            audit.extend(self._pending_audit)
            self._pending_audit.clear()
        current = event
        changed = False
        for handler in handlers:
            try:
                verdict = handler.handle(current, sink)
            except Exception:
                return self._fail(handler, current, audit)
            if verdict is None:
                continue
            if isinstance(verdict, Forward):
                if verdict.event is not None:
                    current = verdict.event
                    changed = True
                continue
            return verdict
        return Forward(current) if changed else FORWARD_UNCHANGED

    def initial_actions(self) -> Sequence[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for handler in self._handlers:
            out.extend(handler.initial())
        return out

    # -- recording path ----------------------------------------------------------------------

    def recording_wants(self, direction: Direction, event_type: str) -> bool:
        """True if a recording rule concerns this event type (else the recording gets it as is)."""
        return self._rec.wants(direction, event_type)

    def recording_events(self, event: Event, audit: list[AuditRecord] | None = None) -> Sequence[Event]:
        """The events to store in the recording in place of the forwarded ``event``.

        Streamed text may be held back and come out with a later call (see docs/policies.md);
        an event no recording rule concerns comes back as ``(event,)`` at once. Audit records go
        to ``audit`` when given, else to the next ``apply``/``take_audit``.
        """
        rec = self._rec
        direction = event.direction
        if event.type not in rec.explicit[direction]:
            ex = rec.wild_except[direction]
            if ex is None or event.type in ex:
                return (event,)
        handlers = self._rec.handlers(event.direction, event.type)
        sink = self._sink
        sink.records = audit if audit is not None else self._pending_audit
        events: list[Event] = [event]
        for handler in handlers:
            out: list[Event] = []
            for ev in events:
                try:
                    got = handler.record(ev, sink)
                except Exception:
                    # Never store an unredacted value: drop it and fail the session closed.
                    self._fail(handler, ev, sink.records)
                    return ()
                if got is None:
                    out.append(ev)
                else:
                    out.extend(got)
            events = out
        return events

    def flush_recording(self, audit: list[AuditRecord] | None = None) -> Sequence[Event]:
        """Release what the recording side still holds (call once, at session end)."""
        sink = self._sink
        sink.records = audit if audit is not None else self._pending_audit
        out: list[Event] = []
        for handler in self._handlers:
            try:
                out.extend(handler.flush_recording(sink))
            except Exception:
                self._fail(handler, None, sink.records)
        return out

    def take_audit(self) -> list[AuditRecord]:
        """Audit records left by ``recording_events`` calls made without an ``audit`` list."""
        out = list(self._pending_audit)
        self._pending_audit.clear()
        return out

    # -- failure -------------------------------------------------------------------------------

    def _fail(self, handler: Handler, event: Event | None, audit: list[AuditRecord]) -> Verdict:
        policy_id = handler.policy_id or type(handler).__name__
        etype = event.type if event is not None else ""
        log.exception(
            "policy %s raised on %s; failing the session closed",
            policy_id,
            etype or "session end",
            extra={"session_id": self.info.session_id, "tenant": self.info.tenant},
        )
        if self._metrics is not None:
            self._metrics.policy_errors_total.labels(policy_id).inc()
        audit.append(AuditRecord("policy", policy_id, "error", "", etype, {"version": self.version}))
        self._fault = policy_id
        # Route every event into the chain from now on, so the next one terminates too.
        self._live.wild_except = [frozenset(), frozenset()]
        return self._terminate()

    def _terminate(self) -> Terminate:
        message = "A relay policy failed while handling this session; the session is closed."
        return Terminate(
            1011, "policy error", (error_event("policy_error", message, error_type="server_error"),)
        )

    @property
    def failed(self) -> str | None:
        """The id of the policy that failed the session, if any."""
        return self._fault
