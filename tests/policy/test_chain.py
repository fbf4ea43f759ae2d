"""The chain: routing, order, replacement, verdict short-cut, fail closed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from relay.events import C2U, U2C, Event
from relay.policy.base import AuditSink, Policy, Subscription
from relay.policy.chain import PolicyChain
from relay.verdicts import Drop, Forward, Terminate, Verdict

from .helpers import c2u, info, metric, run


class Probe(Policy):
    """A test policy: records what it saw and answers with a scripted verdict."""

    def __init__(self, pid: str, types: set[str], answer: Any = None) -> None:
        super().__init__(pid)
        self.types = frozenset(types)
        self.answer = answer
        self.seen: list[str] = []

    def subscriptions(self) -> Iterable[Subscription]:
        return (Subscription(C2U, self.types),)

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        self.seen.append(event.text)
        if isinstance(self.answer, Exception):
            raise self.answer
        if callable(self.answer):
            return self.answer(event, audit)  # type: ignore[no-any-return]
        return self.answer  # type: ignore[no-any-return]


def rename(event: Event, audit: AuditSink) -> Verdict:
    audit.add("rename", "rewrite", "session.instructions", event.type)
    return Forward(event.with_payload({**event.payload(), "session": {"instructions": "new"}}))


def test_wants_is_exact_and_audio_skips_the_chain() -> None:
    ch = PolicyChain([Probe("a", {"session.update"})], info(), None)
    assert ch.wants(C2U, "session.update")
    assert not ch.wants(U2C, "session.update")
    assert not ch.wants(C2U, "input_audio_buffer.append")


def test_forward_replaces_the_event_for_later_policies() -> None:
    first = Probe("first", {"session.update"}, rename)
    second = Probe("second", {"session.update"})
    ch = PolicyChain([first, second], info(), None)
    event = c2u({"type": "session.update", "session": {"instructions": "old"}})
    verdict, audit = run(ch, event)
    assert isinstance(verdict, Forward) and verdict.event is not None
    assert '"new"' in second.seen[0]
    assert verdict.event.payload()["session"]["instructions"] == "new"
    assert [a.source for a in audit] == ["rename"]


def test_first_final_verdict_ends_the_chain() -> None:
    first = Probe("first", {"session.update"}, Drop("no"))
    second = Probe("second", {"session.update"})
    ch = PolicyChain([first, second], info(), None)
    verdict, _ = run(ch, c2u({"type": "session.update"}))
    assert verdict == Drop("no") and second.seen == []


def test_unchanged_chain_returns_the_shared_forward() -> None:
    ch = PolicyChain([Probe("a", {"session.update"}), Probe("b", {"session.update"})], info(), None)
    verdict, audit = run(ch, c2u({"type": "session.update"}))
    assert verdict == Forward() and verdict.event is None and audit == []


def test_a_raising_policy_fails_closed(metrics: Any) -> None:
    broken = Probe("broken", {"session.update"}, RuntimeError("boom"))
    ch = PolicyChain([broken], info(), metrics)
    verdict, audit = run(ch, c2u({"type": "session.update"}))
    assert isinstance(verdict, Terminate) and verdict.code == 1011
    assert verdict.events[0]["type"] == "error" and verdict.events[0]["error"]["code"] == "policy_error"
    assert "boom" not in repr(verdict)  # internals stay in the log, not on the wire
    assert [(a.source, a.action) for a in audit] == [("broken", "error")]
    assert metric(metrics, "relay_policy_errors_total", policy="broken") == 1
    assert ch.failed == "broken"
    # From then on every event, even one nobody subscribes to, ends the session.
    assert ch.wants(C2U, "input_audio_buffer.append")
    verdict2, _ = run(ch, c2u({"type": "input_audio_buffer.append", "audio": ""}))
    assert isinstance(verdict2, Terminate)


def test_a_raising_recording_rewrite_records_nothing_and_fails_closed() -> None:
    class BadRecorder(Probe):
        def recording_subscriptions(self) -> Iterable[Subscription]:
            return (Subscription(C2U, self.types),)

        def record(self, event: Event, audit: AuditSink) -> Any:
            raise ValueError("bad")

    ch = PolicyChain([BadRecorder("rec", {"conversation.item.create"})], info(), None)
    assert ch.recording_events(c2u({"type": "conversation.item.create"})) == ()
    verdict, _ = run(ch, c2u({"type": "session.update"}))
    assert isinstance(verdict, Terminate)


@pytest.mark.parametrize("n", [600])
def test_route_cache_is_bounded(n: int) -> None:
    from relay.policy.chain import _ROUTE_CACHE_MAX

    class Everything(Probe):
        def subscriptions(self) -> Iterable[Subscription]:
            return (Subscription(C2U, everything=True),)

    ch = PolicyChain([Everything("all", set())], info(), None)
    for i in range(n):
        run(ch, c2u({"type": f"made.up.{i}"}))
    assert len(ch._live.cache) == _ROUTE_CACHE_MAX
