"""relay.loopmetrics: the loop-owned counter and histogram expose exactly what prometheus_client's do."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from relay.loopmetrics import LoopCounter, LoopHistogram

BUCKETS = (0.00001, 0.000025, 0.001, 0.25, 1.0)


def exposition(registry: CollectorRegistry) -> str:
    # creation times differ by construction; everything else must be identical
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", generate_latest(registry).decode())


@pytest.mark.parametrize(
    "values", [[], [0.0], [0.00001, 0.000025, 0.0000251, 1.0, 1.5, 7e-9, 0.25], [0.3] * 1000]
)
def test_same_exposition_as_prometheus_client(values: list[float]) -> None:
    reference, ours = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x_seconds", "Help.", ["direction"], buckets=BUCKETS, registry=reference)
    c1 = Counter("x_events_total", "Help.", ["tenant", "type"], registry=reference)
    h2 = LoopHistogram("x_seconds", "Help.", ["direction"], registry=ours, buckets=BUCKETS)
    c2 = LoopCounter("x_events_total", "Help.", ["tenant", "type"], registry=ours)
    for h in (h1, h2):
        h.labels("up")  # pre-initialised at zero
    for v in values:
        h1.labels("down").observe(v)
        h2.labels("down").observe(v)
        c1.labels("acme", "a").inc()
        c2.labels("acme", "a").inc()
    c1.labels("acme", "b").inc(3)
    c2.labels("acme", "b").inc(3)
    assert exposition(ours) == exposition(reference)
    if values:
        assert ours.get_sample_value("x_seconds_count", {"direction": "down"}) == len(values)


def test_labels_are_checked() -> None:
    c = LoopCounter("y_total", "Help.", ["a", "b"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="expected labels"):
        c.labels("only-one")
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("z", "Help.", [], registry=CollectorRegistry(), buckets=(1.0, 0.5))
