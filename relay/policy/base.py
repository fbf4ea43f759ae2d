"""What a policy is: a compiled spec, the events it subscribes to, and a per-session handler.

Rules of this module:
- A ``Policy`` is built once per policy version by ``from_spec`` (validating its ``with:`` block
  and raising ``SectionError`` naming the exact key) and is immutable afterwards: tenants share it.
- ``bind(ctx)`` returns the per-session ``Handler``; stateless policies return themselves.
- Handlers are synchronous and pure (no I/O, no awaits). ``handle`` returns ``None`` (unchanged),
  a ``Forward`` with a replacement event, or a final verdict. Payloads are read-only: rewrite with
  ``Event.with_payload`` on a fresh copy.
- What a handler does is reported through ``AuditSink.add`` (counted per tenant, policy, action);
  an audit record names the field, never the value.
- Subscriptions are declared up front per direction, so the chain can route by a set lookup and
  events nobody subscribes to (audio) never enter it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from relay.contracts import SessionInfo
from relay.events import Dialect, Direction, Event
from relay.metrics import RelayMetrics
from relay.verdicts import AuditRecord, Verdict

log = logging.getLogger("relay.policy")


@dataclass(frozen=True, slots=True)
class Subscription:
    """Event types one policy wants in one direction.

    ``types`` is an explicit set; with ``everything=True`` the policy wants every type except
    ``exclude`` (an allow-list must see types it has never heard of).
    """

    direction: Direction
    types: frozenset[str] = frozenset()
    everything: bool = False
    exclude: frozenset[str] = frozenset()

    def matches(self, direction: Direction, event_type: str) -> bool:
        if direction is not self.direction:
            return False
        if self.everything:
            return event_type not in self.exclude
        return event_type in self.types


class AuditSink:
    """Collects audit records for the event being handled and counts them.

    The chain points ``records`` at the caller's list before each event, so handlers never
    allocate a list of their own. Metric children are resolved once per (policy, action).
    """

    __slots__ = ("records", "tenant", "_metrics", "_children")

    def __init__(self, tenant: str, metrics: RelayMetrics | None) -> None:
        self.records: list[AuditRecord] = []
        self.tenant = tenant
        self._metrics = metrics
        self._children: dict[tuple[str, str], Any] = {}

    def add(self, source: str, action: str, field: str = "", event_type: str = "", **detail: Any) -> None:
        self.records.append(AuditRecord("policy", source, action, field, event_type, detail))
        if self._metrics is not None:
            key = (source, action)
            child = self._children.get(key)
            if child is None:
                child = self._metrics.policy_actions_total.labels(self.tenant, source, action)
                self._children[key] = child
            child.inc()


@dataclass(slots=True)
class SessionContext:
    """What a handler may know about its session."""

    info: SessionInfo
    metrics: RelayMetrics | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dialect(self) -> Dialect:
        return self.info.dialect


class Handler:
    """The per-session side of a policy. Override what the policy needs."""

    policy_id: str = ""

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        """Decide on one subscribed event. ``None`` means: unchanged, go on."""
        return None

    def initial(self) -> Sequence[dict[str, Any]]:
        """Payloads to send upstream right after connecting."""
        return ()

    def record(self, event: Event, audit: AuditSink) -> Sequence[Event] | None:
        """Events to store in the recording in place of ``event``; ``None``: unchanged."""
        return None

    def flush_recording(self, audit: AuditSink) -> Sequence[Event]:
        """Events still held back for the recording, released at session end."""
        return ()


class Policy(Handler):
    """A compiled policy entry. Subclasses set ``use`` through ``@register``."""

    use: ClassVar[str] = ""

    def __init__(self, policy_id: str) -> None:
        self.policy_id = policy_id

    @classmethod
    def from_spec(cls, policy_id: str, spec: Mapping[str, Any], path: str) -> Policy:
        """Build the policy from its ``with:`` mapping; ``path`` is that mapping's key path.

        Raises:
            SectionError: a value is wrong (the schema already checked types and names).
        """
        raise NotImplementedError

    def subscriptions(self) -> Iterable[Subscription]:
        """The events ``handle`` must see."""
        return ()

    def recording_subscriptions(self) -> Iterable[Subscription]:
        """The events ``record`` must see (recording-only rewriting)."""
        return ()

    def bind(self, ctx: SessionContext) -> Handler:
        """The per-session handler; stateless policies are their own handler."""
        return self

    def check_handshake(self, model: str, intent: str) -> None:
        """Refuse the upgrade by raising ``HandshakeRejected``; most policies accept anything."""
        return None


P = TypeVar("P", bound=type[Policy])

REGISTRY: dict[str, type[Policy]] = {}


def register(name: str) -> Callable[[P], P]:
    """Class decorator: make the policy available as ``use: <name>`` in policy files."""

    def deco(cls: P) -> P:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise RuntimeError(f"policy name {name!r} registered twice")
        cls.use = name
        REGISTRY[name] = cls
        return cls

    return deco


def policy_class(name: str) -> type[Policy] | None:
    """The class registered as ``name`` (the built-in policies are imported on first use)."""
    import relay.policy.builtin  # noqa: F401  (registers the built-in policies)

    return REGISTRY.get(name)
