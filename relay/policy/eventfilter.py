"""``use: events``: allow or deny event types per direction.

- ``deny``: listed types are stopped. ``allow``: when set for a direction, only listed types pass
  in it (an allow-list sees every type, so it costs a set lookup per event in that direction).
- A stopped client event is answered with an ``error`` event (``event_not_allowed``, with the
  client's ``event_id``) and not forwarded; with ``on_client_violation: terminate`` the session
  ends with close code 1008 instead. A stopped upstream event is dropped silently for the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relay.events import C2U, U2C, Direction, Event, error_event
from relay.policy.base import AuditSink, Policy, Subscription, register
from relay.policy.errors import SectionError
from relay.policy.source import join
from relay.verdicts import Drop, Reply, Terminate, Verdict

_DIRECTIONS = {"client_to_upstream": C2U, "upstream_to_client": U2C}


@register("events")
class EventFilter(Policy):
    def __init__(
        self,
        policy_id: str,
        deny: dict[Direction, frozenset[str]],
        allow: dict[Direction, frozenset[str]],
        terminate: bool,
    ) -> None:
        super().__init__(policy_id)
        self.deny = deny
        self.allow = allow
        self.terminate = terminate

    @classmethod
    def from_spec(cls, policy_id: str, spec: Mapping[str, Any], path: str) -> EventFilter:
        deny = {_DIRECTIONS[k]: frozenset(v) for k, v in (spec.get("deny") or {}).items()}
        allow = {_DIRECTIONS[k]: frozenset(v) for k, v in (spec.get("allow") or {}).items()}
        if not any(deny.values()) and not allow:
            raise SectionError(path, "list event types under deny or allow")
        for d, types in allow.items():
            both = types & deny.get(d, frozenset())
            if both:
                raise SectionError(
                    join(join(path, "allow"), d.label), f"{sorted(both)[0]!r} is both allowed and denied"
                )
        return cls(policy_id, deny, allow, spec.get("on_client_violation") == "terminate")

    def subscriptions(self) -> Iterable[Subscription]:
        for d in (C2U, U2C):
            if d in self.allow:
                yield Subscription(d, everything=True, exclude=self.allow[d] - self.deny.get(d, frozenset()))
            elif self.deny.get(d):
                yield Subscription(d, self.deny[d])

    def blocked(self, direction: Direction, event_type: str) -> bool:
        if event_type in self.deny.get(direction, ()):
            return True
        allowed = self.allow.get(direction)
        return allowed is not None and event_type not in allowed

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        if not self.blocked(event.direction, event.type):
            return None
        audit.add(self.policy_id, "block_event", "type", event.type, direction=event.direction.label)
        if event.direction is U2C:
            return Drop("event_not_allowed")
        eid = event.payload().get("event_id")
        err = error_event(
            "event_not_allowed",
            f"The event type '{event.type}' is not allowed by relay policy.",
            param="type",
            event_id=eid if isinstance(eid, str) else None,
        )
        if self.terminate:
            return Terminate(1008, "event not allowed", (err,))
        return Reply((err,), "event_not_allowed")
