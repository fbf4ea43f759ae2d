"""Per-session adapters from the core's counting hooks to Prometheus children.

Rules of this module:
- Label children are resolved once and cached (per process, keyed by tenant, direction and
  type); the hot path does one dict lookup and one ``inc``/``observe``.
- Event types outside the known set count as ``other`` (bounded cardinality).
"""

from __future__ import annotations

from typing import Any

from relay.events import Direction
from relay.metrics import RelayMetrics, event_type_label


class PrometheusEventCounter:
    """``relay.session.EventCounter`` for one tenant."""

    __slots__ = ("_children", "_metrics", "_tenant", "_forward")

    def __init__(self, metrics: RelayMetrics, tenant: str, cache: dict[tuple[str, int, str], Any]) -> None:
        self._metrics = metrics
        self._tenant = tenant
        self._children = cache
        self._forward = (
            metrics.forward_seconds.labels(Direction.CLIENT_TO_UPSTREAM.label),
            metrics.forward_seconds.labels(Direction.UPSTREAM_TO_CLIENT.label),
        )

    def count(self, direction: Direction, event_type: str) -> None:
        key = (self._tenant, direction, event_type)
        child = self._children.get(key)
        if child is None:
            child = self._metrics.events_total.labels(
                self._tenant, direction.label, event_type_label(event_type)
            )
            if len(self._children) < 50_000:
                self._children[key] = child
        child.inc()

    def frame_error(self, code: str) -> None:
        self._metrics.client_frame_errors_total.labels(code).inc()

    def forwarded(self, direction: Direction, seconds: float) -> None:
        self._forward[direction].observe(seconds)
