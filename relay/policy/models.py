"""``use: models``: the model allow-list, at the handshake and in events.

- Handshake: ``?model=`` must match an ``allow`` pattern, else HTTP 403 ``model_not_allowed``
  before the upgrade. ``?intent=transcription`` without a model passes (its model is named in
  ``session.update``); ``?call_id=`` (sideband, no model) needs ``allow_sideband: true``.
- Events: a client ``session.update``/``transcription_session.update``/``response.create`` that
  names a model (``model``, or a transcription model when ``transcription`` is set) not on the
  list is rejected with an ``error`` event and not forwarded.
Patterns are shell-style (``gpt-realtime*``), matched case-sensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from relay.errors import HandshakeRejected
from relay.events import C2U, Event, error_event
from relay.policy.base import AuditSink, Policy, Subscription, register
from relay.policy.errors import SectionError
from relay.policy.source import join
from relay.verdicts import Reply, Verdict

_TYPES = frozenset({"session.update", "transcription_session.update", "response.create"})

# Where a model can be named, per event type: (path in the payload, "model" | "transcription").
_SITES: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "session.update": (
        (("session", "model"), "model"),
        (("session", "audio", "input", "transcription", "model"), "transcription"),
        (("session", "input_audio_transcription", "model"), "transcription"),
    ),
    "transcription_session.update": ((("session", "input_audio_transcription", "model"), "transcription"),),
    "response.create": ((("response", "model"), "model"),),
}


def _get(payload: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = payload
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


@register("models")
class ModelAllowList(Policy):
    def __init__(
        self, policy_id: str, allow: tuple[str, ...], transcription: tuple[str, ...] | None, sideband: bool
    ) -> None:
        super().__init__(policy_id)
        self.allow = allow
        self.transcription = transcription
        self.allow_sideband = sideband

    @classmethod
    def from_spec(cls, policy_id: str, spec: Mapping[str, Any], path: str) -> ModelAllowList:
        allow = tuple(str(x) for x in spec.get("allow") or ())
        if not allow:
            raise SectionError(join(path, "allow"), "list at least one model")
        tr = spec.get("transcription")
        return cls(
            policy_id,
            allow,
            tuple(str(x) for x in tr) if tr is not None else None,
            bool(spec.get("allow_sideband", False)),
        )

    def allowed(self, model: str) -> bool:
        return any(fnmatchcase(model, p) for p in self.allow)

    def check_handshake(self, model: str, intent: str) -> None:
        if model:
            if not self.allowed(model):
                raise HandshakeRejected(
                    403,
                    f"The model '{model}' is not allowed for this key by relay policy.",
                    code="model_not_allowed",
                )
        elif intent != "transcription" and not self.allow_sideband:
            raise HandshakeRejected(
                403,
                "Connections without a model (call_id sideband) are not allowed.",
                code="model_not_allowed",
            )

    def subscriptions(self) -> Iterable[Subscription]:
        return (Subscription(C2U, _TYPES),)

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        payload = event.payload()
        for path, kind in _SITES.get(event.type, ()):
            value = _get(payload, path)
            if value is None:
                continue
            if kind == "model":
                ok = isinstance(value, str) and self.allowed(value)
            elif self.transcription is None:
                continue
            else:
                ok = isinstance(value, str) and any(fnmatchcase(value, p) for p in self.transcription)
            if not ok:
                field = ".".join(path)
                audit.add(self.policy_id, "reject", field, event.type)
                eid = payload.get("event_id")
                msg = f"The model '{value}' is not allowed by relay policy."
                err = error_event(
                    "model_not_allowed", msg, param=field, event_id=eid if isinstance(eid, str) else None
                )
                return Reply((err,), "model_not_allowed")
        return None
