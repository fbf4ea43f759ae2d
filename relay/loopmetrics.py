"""Counters and histograms for the per-event hot path: plain integers, exported like any other.

Rules of this module:
- For metrics touched on every relayed event (``relay_events_total``, ``relay_forward_seconds``).
  An increment is one integer add and an observation one ``bisect``: no lock, no validation,
  a few times cheaper than ``prometheus_client``'s children. Everything else stays a
  ``prometheus_client`` metric.
- Owned by the event loop's thread: they are updated and collected (the ``/metrics`` handler runs
  on the loop) from that thread only, which is what makes the lock unnecessary.
- The exposition is the one ``prometheus_client`` gives a ``Counter``/``Histogram`` of the same
  name and labels (``_total``/``_created``, cumulative ``_bucket``s with ``le`` in Go format,
  ``_count``, ``_sum``), so names, dashboards and alerts do not see the difference.
- The collector attributes ``_name``, ``_type`` and ``_labelnames`` mirror ``prometheus_client``'s
  so tooling that lists a registry's metrics lists these too.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_go_float = cast(Callable[[float], str], floatToGoString)


class CounterChild:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket (not cumulative); the last one is ``+Inf``."""
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class LoopMetric(Collector):
    _type = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], CounterChild | HistogramChild] = {}
        registry.register(self)

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> Iterator[Metric]:
        raise NotImplementedError


class LoopCounter(LoopMetric):
    _type = "counter"

    def labels(self, *values: str) -> CounterChild:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {key}")
            child = self._children[key] = CounterChild()
        assert isinstance(child, CounterChild)
        return child

    def _families(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in self._children.items():
            assert isinstance(child, CounterChild)
            family.add_metric(key, child.value, created=child.created)
        yield family


class LoopHistogram(LoopMetric):
    _type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        if list(self._bounds) != sorted(set(self._bounds)):
            raise ValueError(f"{name}: buckets must be increasing")
        self._le = [_go_float(b) for b in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> HistogramChild:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {key}")
            child = self._children[key] = HistogramChild(self._bounds)
        assert isinstance(child, HistogramChild)
        return child

    def _families(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in self._children.items():
            assert isinstance(child, HistogramChild)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(self._le, child.counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(key, buckets, child.sum)
            family.add_sample(
                self._name + "_created", dict(zip(self._labelnames, key, strict=True)), child.created
            )
        yield family


__all__ = ["CounterChild", "HistogramChild", "LoopCounter", "LoopHistogram", "LoopMetric"]
