"""``use: redact``: replace PII and secrets in text fields, per target.

Targets:
- ``upstream``: client events are rewritten before they are sent to OpenAI.
- ``client``: upstream events are rewritten before the client sees them. Deltas are scanned one
  at a time: a value split across two deltas can reach the client in pieces; every ``.done``
  event and every complete item (``response.output_item.done``, ``conversation.item.done``,
  ``response.done`` ...) is scanned whole.
- ``recording`` (the default): what is stored is rewritten; the live stream is untouched.
  Streamed deltas are held back (``relay.policy.streaming``) so split values are caught.

Function-call arguments that parse as JSON are redacted value by value (string and number
leaves) and re-serialised, so they stay valid JSON; other text is redacted as text.
Audit records name the event type, the field path and the count per label, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from relay.events import C2U, U2C, Event
from relay.policy import fields as F
from relay.policy.base import AuditSink, Handler, Policy, SessionContext, Subscription, register
from relay.policy.detectors import Detector, RegexDetector, Scanner, builtin, expand
from relay.policy.errors import SectionError
from relay.policy.source import join
from relay.policy.streaming import Holdback, Released
from relay.verdicts import Forward, Verdict

DEFAULT_REPLACEMENT = "[REDACTED:{label}]"
DEFAULT_HOLDBACK = 128


@register("redact")
class Redact(Policy):
    def __init__(
        self,
        policy_id: str,
        scanner: Scanner,
        kinds: frozenset[str],
        targets: frozenset[str],
        holdback: int,
    ) -> None:
        super().__init__(policy_id)
        self.scanner = scanner
        self.kinds = kinds
        self.targets = targets
        self.holdback = holdback

    @classmethod
    def from_spec(cls, policy_id: str, spec: Mapping[str, Any], path: str) -> Redact:
        names = expand(spec.get("detectors") or ["all"])
        detectors: list[Detector] = [builtin(n) for n in names]
        for i, c in enumerate(spec.get("custom") or ()):
            cpath = join(join(join(path, "custom"), i), "pattern")
            try:
                rx = re.compile(c["pattern"], re.IGNORECASE if c.get("ignore_case") else 0)
            except re.error as exc:
                raise SectionError(cpath, f"not a valid regular expression: {exc}") from None
            if rx.search("") is not None:
                raise SectionError(cpath, "the pattern matches the empty string")
            detectors.append(RegexDetector(c["label"], rx, 1))
        if not detectors:
            raise SectionError(
                join(path, "detectors"), "no detector selected (list some, or add custom ones)"
            )
        kinds_raw = spec.get("fields") or ["all"]
        kinds = frozenset(F.FIELD_KINDS if "all" in kinds_raw else kinds_raw)
        replacement = str(spec.get("replacement", DEFAULT_REPLACEMENT))
        targets = frozenset(spec.get("targets") or ["recording"])
        holdback = int(spec.get("holdback_chars", DEFAULT_HOLDBACK))
        return cls(policy_id, Scanner(detectors, replacement), kinds, targets, holdback)

    # -- subscriptions -----------------------------------------------------------------------

    def subscriptions(self) -> Iterable[Subscription]:
        if "upstream" in self.targets:
            yield Subscription(C2U, F.types_for(self.kinds, C2U, deltas=False))
        if "client" in self.targets:
            yield Subscription(U2C, F.types_for(self.kinds, U2C, deltas=True))

    def recording_subscriptions(self) -> Iterable[Subscription]:
        if "recording" in self.targets:
            yield Subscription(C2U, F.types_for(self.kinds, C2U, deltas=False))
            u2c = set(F.types_for(self.kinds, U2C, deltas=True))
            # Ends of items and responses release what their streams still hold.
            u2c.update(F.ITEM_END, (F.RESPONSE_END,), F.DONE_FAMILY)
            yield Subscription(U2C, frozenset(u2c))

    def bind(self, ctx: SessionContext) -> Handler:
        return RedactSession(self) if "recording" in self.targets else self

    # -- live ----------------------------------------------------------------------------------

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        new = self.redact_event(event, audit, "upstream" if event.direction is C2U else "client")
        return Forward(new) if new is not None else None

    def redact_event(self, event: Event, audit: AuditSink, target: str) -> Event | None:
        found: list[tuple[str, dict[str, int]]] = []

        def fn(value: str, kind: str, path: F.Path) -> str | None:
            new, labels = self.redact_value(value, kind)
            if labels:
                found.append((F.path_str(path), labels))
            return new if labels else None

        new = F.rewrite(event, self.kinds, fn)
        for field, labels in found:
            audit.add(self.policy_id, "redact", field, event.type, target=target, labels=labels)
        return new

    def redact_value(self, value: str, kind: str) -> tuple[str, dict[str, int]]:
        """The redacted value and the count per label (empty: unchanged)."""
        if kind == "function_arguments" and value[:1] in ("{", "["):
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
            else:
                labels: dict[str, int] = {}
                data = self._redact_json(data, labels)
                return (orjson.dumps(data).decode(), labels) if labels else (value, labels)
        new, matches = self.scanner.redact(value)
        counts: dict[str, int] = {}
        for m in matches:
            counts[m.label] = counts.get(m.label, 0) + 1
        return new, counts

    def _redact_json(self, node: Any, labels: dict[str, int]) -> Any:
        if isinstance(node, str):
            new, matches = self.scanner.redact(node)
            for m in matches:
                labels[m.label] = labels.get(m.label, 0) + 1
            return new
        if isinstance(node, bool) or node is None:
            return node
        if isinstance(node, int | float):
            text = str(node)
            new, matches = self.scanner.redact(text)
            if not matches:
                return node
            for m in matches:
                labels[m.label] = labels.get(m.label, 0) + 1
            return new
        if isinstance(node, list):
            return [self._redact_json(x, labels) for x in node]
        if isinstance(node, dict):
            return {k: self._redact_json(v, labels) for k, v in node.items()}
        return node


class RedactSession(Handler):
    """A redact policy bound to one session: live rewriting plus the recording's hold-back."""

    def __init__(self, policy: Redact) -> None:
        self.policy = policy
        self.hold = Holdback(policy.scanner, policy.holdback)

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        return self.policy.handle(event, audit)

    def record(self, event: Event, audit: AuditSink) -> Sequence[Event] | None:
        p = self.policy
        etype = event.type
        stream = F.STREAMS.get(etype)
        if stream is not None:
            if stream.kind not in p.kinds:
                return None
            payload = event.payload()
            delta = payload.get("delta")
            if not isinstance(delta, str):
                return None
            key = (stream.family, str(payload.get("item_id") or ""), payload.get("content_index"))
            return self._out(self.hold.push(key, event, delta), event, audit)
        payload = event.payload()
        released: Released | None = None
        family = F.DONE_FAMILY.get(etype)
        if family is not None:
            key = (family, str(payload.get("item_id") or ""), payload.get("content_index"))
            released = self.hold.close(key)
        elif etype in F.ITEM_END:
            item = payload.get("item")
            item_id = item.get("id") if isinstance(item, Mapping) else None
            if item_id:
                released = self.hold.close_where(item_id=str(item_id))
        elif etype == F.RESPONSE_END:
            resp = payload.get("response")
            rid = resp.get("id") if isinstance(resp, Mapping) else None
            if rid:
                released = self.hold.close_where(response_id=str(rid))
        new = p.redact_event(event, audit, "recording") if etype in F.WHOLE else None
        if released is None or not released.events:
            return (new,) if new is not None else None
        out = list(self._out(released, event, audit))
        out.append(new if new is not None else event)
        return out

    def _out(self, released: Released, event: Event, audit: AuditSink) -> list[Event]:
        if released.labels:
            audit.add(
                self.policy.policy_id,
                "redact",
                "delta",
                event.type,
                target="recording",
                labels=released.labels,
            )
        return released.events

    def flush_recording(self, audit: AuditSink) -> Sequence[Event]:
        released = self.hold.close_all()
        if released.labels:
            audit.add(
                self.policy.policy_id, "redact", "delta", "", target="recording", labels=released.labels
            )
        return released.events
