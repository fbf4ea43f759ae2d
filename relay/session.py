"""The sans-I/O session core: one frame in, a list of actions out.

Rules of this module:
- No awaits, no sockets, no clocks of its own: the pumps pass frames and ``now_ns`` in and carry
  the returned actions out (``relay.actions``). Everything here is testable with plain calls.
- Order: a frame is validated (client frames fully, upstream frames by a type peek), then the
  policy chain runs if any policy subscribes to its type, then the budget guard may hold or veto
  it, then it is forwarded. What went out is recorded, timed and metered in ``sent``.
- Frames nobody acts on pass byte-identical: the exact wire text is forwarded.
- Errors in the client's frames are the client's: they get an ``error`` event and the session
  goes on. A policy that raises ends the session (the chain turns it into ``Terminate(1011)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from relay.actions import Action, Close, Send
from relay.contracts import RecordingSink, SessionGuard, SessionInfo, SessionPolicy
from relay.events import (
    C2U,
    U2C,
    Direction,
    Event,
    FrameError,
    error_event,
    parse_client_frame,
    parse_upstream_frame,
)
from relay.verdicts import AuditRecord, Drop, Forward, Reply, Terminate, Verdict


class EventObserver(Protocol):
    def on_event(self, event: Event, now_ns: int) -> None: ...


class EventCounter(Protocol):
    def count(self, direction: Direction, event_type: str) -> None: ...

    def frame_error(self, code: str) -> None: ...

    def forwarded(self, direction: Direction, seconds: float) -> None: ...


class Session:
    """One relayed session. The server builds it with the session's collaborators."""

    def __init__(
        self,
        info: SessionInfo,
        *,
        policy: SessionPolicy | None = None,
        guard: SessionGuard | None = None,
        recording: RecordingSink | None = None,
        observers: Sequence[EventObserver] = (),
        counter: EventCounter | None = None,
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.info = info
        self.policy = policy
        self.guard = guard
        self.recording = recording
        self.observers = tuple(observers)
        self.counter = counter
        self.max_frame_bytes = max_frame_bytes
        self.seq = [0, 0]
        """Frames received per direction (index: ``Direction``)."""
        self.frame_errors = 0
        self.recording_failed = False
        self._audit: list[AuditRecord] = []
        self._guard_audit: list[AuditRecord] | None = getattr(guard, "pending_audit", None)

    # -- frames in ----------------------------------------------------------------------------

    def client_text(self, text: str, now_ns: int) -> list[Action]:
        seq = self.seq[C2U]
        self.seq[C2U] = seq + 1
        if len(text) > self.max_frame_bytes:
            return self._frame_error(
                "frame_too_large",
                f"The event is {len(text)} bytes; the relay accepts at most {self.max_frame_bytes}.",
                None,
            )
        try:
            event = parse_client_frame(text, seq, now_ns)
        except FrameError as exc:
            return self._frame_error(exc.code, exc.message, None)
        return self._route(event)

    def client_binary(self, size: int) -> list[Action]:
        self.seq[C2U] += 1
        return self._frame_error(
            "binary_frame_not_supported",
            f"Binary frames are not part of the Realtime protocol ({size} bytes ignored); send JSON text.",
            None,
        )

    def upstream_text(self, text: str, now_ns: int) -> list[Action]:
        seq = self.seq[U2C]
        self.seq[U2C] = seq + 1
        return self._route(parse_upstream_frame(text, seq, now_ns))

    # -- frames out ---------------------------------------------------------------------------

    def sent(self, action: Send, now_ns: int) -> Sequence[Action]:
        """Bookkeeping once ``action`` went out: recording, observers, metering."""
        event = action.event
        if event is None:
            return ()
        recording = self.recording
        if recording is not None:
            t_us = (now_ns - self.info.started_ns) // 1000
            policy = self.policy
            if policy is None or not policy.recording_wants(event.direction, event.type):
                ok = recording.record_event(event, t_us) is not False
            else:
                ok = True
                for ev in policy.recording_events(event, self._audit):
                    ok = recording.record_event(ev, t_us) is not False and ok
                if self._audit:
                    self._flush_audit(now_ns)
            if not ok and not self.recording_failed:
                self.recording_failed = True
                return (
                    Send(
                        U2C,
                        _dumps(
                            error_event("recording_unavailable", _RECORDING_LOST, error_type="server_error")
                        ),
                    ),
                    Close(1011, "recording overflow", outcome="recording_overflow"),
                )
        for observer in self.observers:
            observer.on_event(event, now_ns)
        if self.counter is not None and event.recv_ns:
            self.counter.forwarded(event.direction, (now_ns - event.recv_ns) / 1e9)
        guard = self.guard
        if guard is not None:
            follow = guard.after_forward(event, now_ns)
            if self._guard_audit:
                self._flush_audit(event.recv_ns)
            return follow
        return ()

    def finish(self, now_ns: int) -> None:
        """At session end: record what the policies still hold back for the recording."""
        if self.recording is None or self.policy is None:
            return
        t_us = (now_ns - self.info.started_ns) // 1000
        for ev in self.policy.flush_recording(self._audit):
            self.recording.record_event(ev, t_us)
        self._flush_audit(now_ns)

    def relay_event(self, kind: str, body: dict[str, Any], now_ns: int) -> None:
        """Record one of the relay's own events (open, close, drain...) in the session's trail."""
        if self.recording is not None:
            self.recording.record_relay_event(kind, body, (now_ns - self.info.started_ns) // 1000)

    # -- internals ----------------------------------------------------------------------------

    def _route(self, event: Event) -> list[Action]:
        if self.counter is not None:
            self.counter.count(event.direction, event.type)
        policy = self.policy
        if policy is not None and policy.wants(event.direction, event.type):
            verdict = policy.apply(event, self._audit)
            if self._audit:
                self._flush_audit(event.recv_ns)
            if verdict.__class__ is not Forward:
                return self._act(event, verdict)
            replacement = verdict.event
            if replacement is not None:
                event = replacement
        guard = self.guard
        if guard is not None:
            held = guard.before_forward(event)
            if self._guard_audit:
                self._flush_audit(event.recv_ns)
            if held is not None:
                return list(held)
        return [Send(event.direction, event.text, event)]

    def _act(self, event: Event, verdict: Verdict) -> list[Action]:
        match verdict:
            case Drop():
                return []
            case Reply(events=events):
                back = event.direction  # the source: C2U events are answered towards the client
                to = U2C if back is C2U else C2U
                return [self._synth(to, payload) for payload in events]
            case Terminate(code=code, reason=reason, events=events):
                actions: list[Action] = [self._synth(U2C, payload) for payload in events]
                actions.append(Close(code, reason, outcome="policy_error" if code == 1011 else "policy"))
                return actions
            case Forward():
                return [Send(event.direction, event.text, event)]
        raise AssertionError(f"unknown verdict {verdict!r}")

    def _synth(self, to: Direction, payload: dict[str, Any]) -> Send:
        """A relay-made event sent to ``to``; recorded like any other event that went out."""
        text = _dumps(payload)
        return Send(to, text, Event(to, str(payload.get("type", "")), text, -1, 0, payload))

    def _frame_error(self, code: str, message: str, event_id: str | None) -> list[Action]:
        self.frame_errors += 1
        if self.counter is not None:
            self.counter.frame_error(code)
        return [self._synth(U2C, error_event(code, message, event_id=event_id))]

    def _flush_audit(self, now_ns: int) -> None:
        pending = self._guard_audit
        if pending:
            self._audit.extend(pending)
            pending.clear()
        if not self._audit:
            return
        if self.recording is not None:
            t_us = max(0, (now_ns - self.info.started_ns) // 1000)
            for record in self._audit:
                self.recording.record_relay_event(
                    record.kind,
                    {
                        "source": record.source,
                        "action": record.action,
                        "field": record.field,
                        "event_type": record.event_type,
                        **({"detail": record.detail} if record.detail else {}),
                    },
                    t_us,
                )
        self._audit.clear()


_RECORDING_LOST = (
    "The compliance recording cannot keep up; the relay ends the session rather than record it with gaps."
)


def _dumps(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


__all__ = ["Session", "EventObserver", "EventCounter"]
