"""The interfaces between the session core and the subsystems it drives.

The core (``relay.session``) knows these Protocols only. Each subsystem implements one:
- ``SessionPolicy``: the policy chain bound to one session (``relay.policy``).
- ``SessionGuard``: metering and budget enforcement for one session (``relay.budget``).
- ``RecordingSink``: the compliance recording of one session (``relay.recording``).
All three are created per session by the server, from the effective tenant policy, and all their
methods called by the core are synchronous and must not block: I/O goes through ``actions.Call``
or a background task the subsystem owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.actions import Action
from relay.events import Dialect, Direction, Event
from relay.verdicts import AuditRecord, Verdict


@dataclass(slots=True)
class SessionInfo:
    """Facts fixed at the handshake. Shared, read-only, by every subsystem of the session."""

    session_id: str
    tenant: str
    key_id: str
    model: str
    dialect: Dialect
    intent: str = ""
    call_id: str = ""
    client_addr: str = ""
    user_agent: str = ""
    started_at: float = 0.0
    """Wall-clock start, seconds since the epoch (UTC)."""
    started_ns: int = 0
    """Monotonic start (``time.monotonic_ns``); event times in the session are relative to it."""
    policy_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SessionSummary:
    """What the core knows when the session ends; handed to guard and recording on close."""

    ended_at: float
    duration_s: float
    client_close_code: int | None
    client_close_reason: str
    upstream_close_code: int | None
    upstream_close_reason: str
    outcome: str
    events_client_to_upstream: int
    events_upstream_to_client: int
    usage: dict[str, Any] = field(default_factory=dict)
    """Filled by the guard: audio seconds, tokens, USD."""


class SessionPolicy(Protocol):
    def wants(self, direction: Direction, event_type: str) -> bool:
        """True if any policy subscribes to this event type in this direction (precomputed)."""

    def apply(self, event: Event, audit: list[AuditRecord]) -> Verdict:
        """Run the chain on one event; append what policies did to ``audit``.

        A policy that raises must not escape: the chain fails closed with ``Terminate(1011)``.
        """

    def initial_actions(self) -> Sequence[dict[str, Any]]:
        """Payloads to send upstream right after connecting (e.g. a pinned session.update)."""

    def recording_wants(self, direction: Direction, event_type: str) -> bool:
        """True if a recording rule concerns this event type (else it is recorded as forwarded)."""

    def recording_events(self, event: Event, audit: list[AuditRecord] | None = None) -> Sequence[Event]:
        """What to record in place of a forwarded event, after ``recording``-target redaction.

        Usually ``(event,)``. Streaming deltas may be held back and released later (redacted) so
        a value split across deltas is still caught in the recording.
        """

    def flush_recording(self, audit: list[AuditRecord] | None = None) -> Sequence[Event]:
        """Release what the recording side still holds back; called once at session end."""


class SessionGuard(Protocol):
    def before_forward(self, event: Event) -> Sequence[Action] | None:
        """Called for every event about to be forwarded, after policies.

        ``None``: forward as usual. Otherwise the returned actions replace the forward (the guard
        includes a ``Send`` of the event itself when it lets it through, e.g. after reserving).
        """

    def after_forward(self, event: Event, sent_ns: int) -> Sequence[Action]:
        """Called once the event went out; returns follow-up actions (usually none)."""

    def close(self, summary: SessionSummary) -> None:
        """Settle and release what the session holds (fills ``summary.usage``)."""

    # Optional: ``pending_audit: list[AuditRecord]``, one list for the guard's life that it appends
    # to (budget warnings, refusals); after each hook the core records and clears what it holds.


class RecordingSink(Protocol):
    def record_event(self, event: Event, t_us: int) -> bool | None:
        """Record an event as it was forwarded; ``t_us`` is µs since session start. Never blocks.

        Returns False when the recording overflowed under ``on_overflow: terminate``: the core
        then ends the session (a compliance recording with a hole is worse than a dropped call).
        """

    def record_relay_event(self, kind: str, body: dict[str, Any], t_us: int) -> None:
        """Record the relay's own event (open, close, policy action, budget...). Never blocks."""

    def close(self, summary: SessionSummary) -> None:
        """Seal the recording; the sink finishes uploads in its own tasks."""
