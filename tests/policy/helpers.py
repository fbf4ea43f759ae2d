"""Helpers for the policy tests: build events and chains from plain data."""

from __future__ import annotations

import textwrap
from typing import Any

import orjson
import yaml

from relay.contracts import SessionInfo
from relay.events import C2U, U2C, Dialect, Direction, Event
from relay.metrics import RelayMetrics
from relay.policy.base import policy_class
from relay.policy.chain import PolicyChain
from relay.verdicts import AuditRecord, Forward, Verdict

_seq = iter(range(1, 10**9))


def ev(direction: Direction, payload: dict[str, Any]) -> Event:
    """An event as the relay builds it: wire text, type, lazily parsed payload."""
    return Event(direction, payload["type"], orjson.dumps(payload).decode(), next(_seq), 0)


def c2u(payload: dict[str, Any]) -> Event:
    return ev(C2U, payload)


def u2c(payload: dict[str, Any]) -> Event:
    return ev(U2C, payload)


def info(dialect: Dialect = Dialect.GA, *, tenant: str = "acme", intent: str = "") -> SessionInfo:
    return SessionInfo("sess_1", tenant, "k1", "gpt-realtime", dialect, intent=intent)


def chain(
    entries: list[dict[str, Any]] | str,
    dialect: Dialect = Dialect.GA,
    metrics: RelayMetrics | None = None,
    intent: str = "",
) -> PolicyChain:
    """A chain from policy entries (``[{use:, id:, with:}]``, or the same as YAML text)."""
    if isinstance(entries, str):
        entries = yaml.safe_load(textwrap.dedent(entries))
    assert isinstance(entries, list)
    policies = []
    for i, e in enumerate(entries):
        cls = policy_class(e["use"])
        assert cls is not None, e["use"]
        policies.append(cls.from_spec(e.get("id", e["use"]), e.get("with") or {}, f"policies[{i}].with"))
    return PolicyChain(policies, info(dialect, intent=intent), metrics, version="test")


def run(ch: PolicyChain, event: Event) -> tuple[Verdict, list[AuditRecord]]:
    audit: list[AuditRecord] = []
    if not ch.wants(event.direction, event.type):
        return Forward(), audit
    return ch.apply(event, audit), audit


def out_payload(verdict: Verdict, original: Event) -> dict[str, Any]:
    """The payload that goes on the wire for a Forward verdict."""
    assert isinstance(verdict, Forward), verdict
    return (verdict.event or original).payload()


def metric(m: RelayMetrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return value or 0.0
