"""The sans-I/O session core, driven with plain calls: frames in, actions out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from relay.actions import Call, Close, Send
from relay.contracts import SessionInfo
from relay.events import C2U, U2C, Dialect, Direction, Event
from relay.session import Session
from relay.verdicts import AuditRecord, Drop, Forward, Reply, Terminate, Verdict


def info() -> SessionInfo:
    return SessionInfo("rs_1", "acme", "k1", "gpt-realtime", Dialect.GA, started_ns=1_000_000)


class RecordingSpy:
    def __init__(self, accept: bool = True) -> None:
        self.events: list[tuple[Event, int]] = []
        self.relay: list[tuple[str, dict[str, Any], int]] = []
        self.accept = accept

    def record_event(self, event: Event, t_us: int) -> bool:
        self.events.append((event, t_us))
        return self.accept

    def record_relay_event(self, kind: str, body: dict[str, Any], t_us: int) -> None:
        self.relay.append((kind, body, t_us))

    def close(self, summary: Any) -> None:
        pass


class TablePolicy:
    """A chain stand-in answering from a table: event type -> verdict."""

    def __init__(self, table: dict[str, Verdict], audit: AuditRecord | None = None) -> None:
        self.table = table
        self.audit = audit
        self.seen: list[str] = []

    def wants(self, direction: Direction, event_type: str) -> bool:
        return event_type in self.table

    def apply(self, event: Event, audit: list[AuditRecord]) -> Verdict:
        self.seen.append(event.type)
        if self.audit is not None:
            audit.append(self.audit)
        return self.table[event.type]

    def initial_actions(self) -> Sequence[dict[str, Any]]:
        return ()

    def recording_wants(self, direction: Direction, event_type: str) -> bool:
        return False

    def recording_events(self, event: Event, audit: list[AuditRecord] | None = None) -> Sequence[Event]:
        return (event,)

    def flush_recording(self, audit: list[AuditRecord] | None = None) -> Sequence[Event]:
        return ()


class CountingGuard:
    def __init__(self, hold_types: frozenset[str] = frozenset()) -> None:
        self.before: list[str] = []
        self.after: list[str] = []
        self.hold_types = hold_types

    def before_forward(self, event: Event) -> Sequence[Any] | None:
        self.before.append(event.type)
        if event.type in self.hold_types:

            async def reserve() -> Sequence[Any]:
                return [Send(C2U, event.text, event)]

            return [Call(reserve, hold=True)]
        return None

    def after_forward(self, event: Event, sent_ns: int) -> Sequence[Any]:
        self.after.append(event.type)
        return ()

    def close(self, summary: Any) -> None:
        pass


def only_send(actions: list[Any]) -> Send:
    assert len(actions) == 1 and isinstance(actions[0], Send), actions
    return actions[0]


def error_of(action: Any) -> dict[str, Any]:
    assert isinstance(action, Send) and action.to is U2C
    payload = orjson.loads(action.text)
    assert payload["type"] == "error"
    return payload["error"]


def test_frames_pass_byte_identical_both_ways() -> None:
    s = Session(info())
    odd = '{"event_id":"e1","type":"x.unknown","zz":[1,2],"a":{"type":"nested"}}'
    send = only_send(s.client_text(odd, 5))
    assert send.to is C2U and send.text == odd  # to upstream, unchanged
    down = '{ "type" : "response.output_audio.delta", "delta":"AAAA", "obfuscation":"x"}'
    send = only_send(s.upstream_text(down, 6))
    assert send.to is U2C and send.text == down
    assert send.event is not None and send.event.type == "response.output_audio.delta"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1,2]", "invalid_event"),
        ('{"event_id":"e"}', "missing_type"),
        ('{"type": 5}', "missing_type"),
    ],
)
def test_malformed_client_frames_get_an_error_and_are_not_forwarded(frame: str, code: str) -> None:
    s = Session(info())
    actions = s.client_text(frame, 1)
    assert len(actions) == 1
    err = error_of(actions[0])
    assert err["code"] == code and err["type"] == "invalid_request_error"
    # the session goes on
    assert only_send(s.client_text('{"type":"response.create"}', 2)).to is C2U


def test_oversized_and_binary_frames_are_refused() -> None:
    s = Session(info(), max_frame_bytes=100)
    assert (
        error_of(s.client_text('{"type":"x","pad":"' + "a" * 200 + '"}', 1)[0])["code"] == "frame_too_large"
    )
    assert error_of(s.client_binary(10)[0])["code"] == "binary_frame_not_supported"
    assert s.frame_errors == 2


def test_unsubscribed_events_skip_the_chain() -> None:
    policy = TablePolicy({"session.update": Forward()})
    s = Session(info(), policy=policy)
    s.client_text('{"type":"input_audio_buffer.append","audio":"AAAA"}', 1)
    assert policy.seen == []
    s.client_text('{"type":"session.update","session":{}}', 1)
    assert policy.seen == ["session.update"]


def test_verdicts_map_to_actions() -> None:
    replacement = Event(
        C2U, "session.update", '{"type":"session.update","session":{"instructions":"pinned"}}', 0, 0
    )
    rec = RecordingSpy()
    policy = TablePolicy(
        {
            "session.update": Forward(replacement),
            "conversation.item.retrieve": Drop("denied"),
            "response.create": Reply(({"type": "error", "error": {"code": "policy_violation"}},), "tool"),
            "conversation.item.create": Terminate(1008, "nope", ({"type": "error", "error": {"code": "x"}},)),
        },
        audit=AuditRecord("policy", "lockdown", "pin_instructions", "session.instructions", "session.update"),
    )
    s = Session(info(), policy=policy, recording=rec)
    assert (
        only_send(s.client_text('{"type":"session.update","session":{"instructions":"evil"}}', 2)).text
        == replacement.text
    )
    assert s.client_text('{"type":"conversation.item.retrieve","item_id":"i"}', 2) == []
    reply = only_send(s.client_text('{"type":"response.create"}', 2))
    assert reply.to is U2C and orjson.loads(reply.text)["error"]["code"] == "policy_violation"
    actions = s.client_text('{"type":"conversation.item.create","item":{}}', 2)
    assert isinstance(actions[0], Send) and actions[0].to is U2C
    assert isinstance(actions[1], Close) and actions[1].code == 1008
    # every policy action is in the recording's trail, without values
    assert len(rec.relay) == 4 and rec.relay[0][0] == "policy"
    assert rec.relay[0][1]["action"] == "pin_instructions" and "evil" not in str(rec.relay)


def test_policy_reply_to_an_upstream_event_goes_back_upstream() -> None:
    policy = TablePolicy(
        {"response.function_call_arguments.done": Reply(({"type": "conversation.item.create"},), "x")}
    )
    s = Session(info(), policy=policy)
    send = only_send(s.upstream_text('{"type":"response.function_call_arguments.done","name":"rm"}', 1))
    assert send.to is C2U


def test_guard_can_hold_an_event_and_sees_every_forwarded_one() -> None:
    guard = CountingGuard(frozenset({"response.create"}))
    s = Session(info(), guard=guard)
    actions = s.client_text('{"type":"response.create"}', 1)
    assert len(actions) == 1 and isinstance(actions[0], Call) and actions[0].hold
    send = only_send(s.upstream_text('{"type":"response.created"}', 2))
    s.sent(send, 3)
    assert guard.before == ["response.create", "response.created"]
    assert guard.after == ["response.created"]


def test_sent_records_with_session_relative_time_and_observes_latency() -> None:
    rec = RecordingSpy()
    latencies: list[tuple[Direction, float]] = []

    class Counter:
        def count(self, direction: Direction, event_type: str) -> None:
            pass

        def frame_error(self, code: str) -> None:
            pass

        def forwarded(self, direction: Direction, seconds: float) -> None:
            latencies.append((direction, seconds))

    s = Session(info(), recording=rec, counter=Counter())
    send = only_send(s.client_text('{"type":"input_audio_buffer.append","audio":"AAAA"}', 2_000_000))
    s.sent(send, 2_500_000)
    assert rec.events[0][1] == 1_500  # µs since started_ns
    assert latencies == [(C2U, 0.0005)]


def test_recording_overflow_ends_the_session() -> None:
    s = Session(info(), recording=RecordingSpy(accept=False))
    send = only_send(s.client_text('{"type":"input_audio_buffer.append","audio":"AAAA"}', 2))
    follow = list(s.sent(send, 3))
    assert error_of(follow[0])["code"] == "recording_unavailable"
    assert isinstance(follow[1], Close) and follow[1].code == 1011


class AuditingGuard(CountingGuard):
    """A guard that leaves audit records in ``pending_audit`` (as the budget guard does)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending_audit: list[AuditRecord] = []

    def before_forward(self, event: Event) -> Sequence[Any] | None:
        if event.type == "response.create":
            self.pending_audit.append(AuditRecord("budget", "usd", "warn", event_type=event.type))
        return super().before_forward(event)

    def after_forward(self, event: Event, sent_ns: int) -> Sequence[Any]:
        if event.type == "response.done":
            self.pending_audit.append(AuditRecord("budget", "usd", "exhausted", event_type=event.type))
        return super().after_forward(event, sent_ns)


def test_the_guards_audit_records_reach_the_trail_once() -> None:
    guard = AuditingGuard()
    spy = RecordingSpy()
    s = Session(info(), guard=guard, recording=spy)
    for action in s.client_text('{"type":"input_audio_buffer.append","audio":"AAAA"}', 2_000_000):
        s.sent(action, 2_000_000)
    assert spy.relay == []  # nothing pending: nothing recorded
    for action in s.client_text('{"type":"response.create"}', 3_000_000):
        s.sent(action, 3_000_000)
    for action in s.upstream_text('{"type":"response.done","response":{}}', 4_000_000):
        s.sent(action, 4_000_000)
    assert [(kind, body["action"], body["event_type"]) for kind, body, _ in spy.relay] == [
        ("budget", "warn", "response.create"),
        ("budget", "exhausted", "response.done"),
    ]
    assert guard.pending_audit == []  # the core cleared the guard's own list
