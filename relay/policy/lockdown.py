"""``use: lockdown``: session settings the client cannot change.

- ``instructions``: pinned text. ``replace``: any instructions the client sends in
  ``session.update`` or ``response.create`` are replaced by it; ``prepend``/``append``: the
  client's text is kept after/before it. The relay also sends it in its own ``session.update``
  right after connecting, so a client that never sets instructions still runs under them. While
  instructions are pinned, client messages with role ``system`` are refused (they would override
  them) unless ``allow_system_items: true``.
- ``hide_instructions``: the client sees ``""`` (or the given placeholder) instead of the
  instructions in ``session.created`` / ``session.updated``.
- ``voices``, ``output_modalities``: values outside the list are violations.
- ``max_output_tokens``: larger values (and ``"inf"``) are lowered to the cap.
- ``turn_detection``, ``transcription``: the required setting overwrites whatever the client sends.
- ``locked``: session fields (GA dotted names; beta equivalents follow) the client may not set.
- Violations are removed from the event (``on_violation: strip``, audited) or the event is
  refused with an ``error`` event (``reject``). Both dialects are handled: GA
  ``session.audio.output.voice`` and beta ``session.voice`` are the same setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from relay.events import C2U, U2C, Dialect, Event, error_event
from relay.policy.base import AuditSink, Handler, Policy, SessionContext, Subscription, register
from relay.verdicts import Forward, Reply, Verdict

Path = tuple[str, ...]

# GA name → beta name for session fields that moved (protocol doc §2.4).
BETA_NAMES: dict[str, str] = {
    "audio.output.voice": "voice",
    "audio.output.speed": "speed",
    "audio.output.format": "output_audio_format",
    "audio.input.format": "input_audio_format",
    "audio.input.turn_detection": "turn_detection",
    "audio.input.transcription": "input_audio_transcription",
    "audio.input.noise_reduction": "input_audio_noise_reduction",
    "max_output_tokens": "max_response_output_tokens",
    "output_modalities": "modalities",
}


def _paths(ga: str) -> tuple[Path, ...]:
    """Both spellings of a session field, GA first."""
    beta = BETA_NAMES.get(ga)
    out = [tuple(ga.split("."))]
    if beta is not None:
        out.append(tuple(beta.split(".")))
    return tuple(out)


_VOICE = _paths("audio.output.voice")
_MAX = (("max_output_tokens",), ("max_response_output_tokens",))
_TURN = _paths("audio.input.turn_detection")
_TRANSCRIPTION = _paths("audio.input.transcription")
_MODALITIES = _paths("output_modalities")
_UNSET: Any = object()


def _get(node: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _UNSET
        node = node[key]
    return node


def _set(node: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _delete(node: dict[str, Any], path: Path) -> None:
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


@register("lockdown")
class LockDown(Policy):
    def __init__(self, policy_id: str, spec: Mapping[str, Any]) -> None:
        super().__init__(policy_id)
        instr = spec.get("instructions")
        self.pinned: str | None = instr["text"] if instr else None
        self.mode: str = instr.get("mode", "replace") if instr else "replace"
        self.separator: str = instr.get("separator", "\n\n") if instr else "\n\n"
        hide = spec.get("hide_instructions", False)
        self.hide: str | None = "" if hide is True else (hide if isinstance(hide, str) else None)
        self.voices: frozenset[str] | None = frozenset(spec["voices"]) if "voices" in spec else None
        self.max_tokens: int | None = spec.get("max_output_tokens")
        self.turn_detection: Any = spec.get("turn_detection", _UNSET)
        self.transcription: Any = spec.get("transcription", _UNSET)
        mods = spec.get("output_modalities")
        self.modalities: frozenset[str] | None = frozenset(mods) if mods else None
        self.modalities_list: list[str] = list(mods or ())
        self.locked: tuple[tuple[str, Path], ...] = tuple(
            (name, p) for name in spec.get("locked") or () for p in _paths(name)
        )
        self.reject = spec.get("on_violation") == "reject"
        self.block_system = self.pinned is not None and not spec.get("allow_system_items", False)

    @classmethod
    def from_spec(cls, policy_id: str, spec: Mapping[str, Any], path: str) -> LockDown:
        return cls(policy_id, spec)

    def subscriptions(self) -> Iterable[Subscription]:
        c2u = {"session.update", "response.create"}
        if self.block_system:
            c2u.add("conversation.item.create")
        yield Subscription(C2U, frozenset(c2u))
        if self.hide is not None:
            yield Subscription(U2C, frozenset({"session.created", "session.updated"}))

    def bind(self, ctx: SessionContext) -> Handler:
        return LockDownSession(self, ctx.dialect, ctx.info.intent)

    def combine(self, client: Any) -> str:
        assert self.pinned is not None
        if self.mode == "replace" or not isinstance(client, str) or not client:
            return self.pinned
        if self.mode == "prepend":
            return f"{self.pinned}{self.separator}{client}"
        return f"{client}{self.separator}{self.pinned}"


class _Violation(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class LockDownSession(Handler):
    def __init__(self, policy: LockDown, dialect: Dialect, intent: str) -> None:
        self.p = policy
        self.dialect = dialect
        self.intent = intent

    def initial(self) -> Sequence[dict[str, Any]]:
        p = self.p
        if self.intent == "transcription":
            return ()
        ga = self.dialect is Dialect.GA
        session: dict[str, Any] = {}
        if p.pinned is not None:
            session["instructions"] = p.pinned
        if p.voices:
            # The server default voice may not be on the list: start on an allowed one.
            _set(session, _VOICE[0 if ga else 1], sorted(p.voices)[0])
        if p.max_tokens is not None:
            _set(session, _MAX[0 if ga else 1], p.max_tokens)
        if p.turn_detection is not _UNSET:
            _set(session, _TURN[0 if ga else 1], p.turn_detection)
        if p.transcription is not _UNSET:
            _set(session, _TRANSCRIPTION[0 if ga else 1], p.transcription)
        if p.modalities is not None and len(p.modalities) == 1:
            _set(session, _MODALITIES[0 if ga else 1], p.modalities_list)
        if not session:
            return ()
        if ga:
            session = {"type": "realtime", **session}
        return ({"type": "session.update", "session": session},)

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        if event.direction is U2C:
            return self._hide(event, audit)
        if event.type == "conversation.item.create":
            return self._system_item(event, audit)
        key = "session" if event.type == "session.update" else "response"
        payload = event.payload()
        container = payload.get(key)
        if not isinstance(container, Mapping):
            return None
        fresh = orjson.loads(event.text)
        target = fresh[key]
        try:
            changed = self._enforce(target, key, event.type, audit)
            if key == "response":
                changed |= self._input_items(target, event.type, audit)
        except _Violation as v:
            audit.add(self.p.policy_id, "reject", v.field, event.type)
            eid = payload.get("event_id")
            err = error_event(
                "policy_violation", v.message, param=v.field, event_id=eid if isinstance(eid, str) else None
            )
            return Reply((err,), "policy_violation")
        return Forward(event.with_payload(fresh)) if changed else None

    def _violate(
        self, target: dict[str, Any], path: Path, field: str, message: str, etype: str, audit: AuditSink
    ) -> None:
        if self.p.reject:
            raise _Violation(field, message)
        _delete(target, path)
        audit.add(self.p.policy_id, "strip_field", field, etype)

    def _enforce(self, s: dict[str, Any], key: str, etype: str, audit: AuditSink) -> bool:
        p = self.p
        pid = p.policy_id
        changed = False

        def name(path: Path) -> str:
            return ".".join((key, *path))

        if p.pinned is not None and "instructions" in s:
            new = p.combine(s["instructions"])
            if new != s["instructions"]:
                s["instructions"] = new
                audit.add(pid, "pin_instructions", f"{key}.instructions", etype, mode=p.mode)
                changed = True
        for ga_name, path in p.locked:
            if _get(s, path) is not _UNSET:
                self._violate(
                    s, path, name(path), f"The field '{ga_name}' is locked by relay policy.", etype, audit
                )
                changed = True
        if p.voices is not None:
            for path in _VOICE:
                v = _get(s, path)
                if v is _UNSET:
                    continue
                vname = v.get("id") if isinstance(v, Mapping) else v
                if vname not in p.voices:
                    self._violate(
                        s,
                        path,
                        name(path),
                        f"The voice '{vname}' is not allowed by relay policy.",
                        etype,
                        audit,
                    )
                    changed = True
        if p.modalities is not None:
            for path in _MODALITIES:
                v = _get(s, path)
                if v is _UNSET:
                    continue
                if not isinstance(v, list) or not set(v) <= p.modalities:
                    self._violate(
                        s,
                        path,
                        name(path),
                        f"The output modalities {v!r} are not allowed by relay policy.",
                        etype,
                        audit,
                    )
                    changed = True
        if p.max_tokens is not None:
            for path in _MAX:
                v = _get(s, path)
                if v is _UNSET:
                    continue
                if not isinstance(v, int) or isinstance(v, bool) or v > p.max_tokens:
                    _set(s, path, p.max_tokens)
                    audit.add(pid, "cap_max_output_tokens", name(path), etype, cap=p.max_tokens)
                    changed = True
        if key == "session":
            for required, paths, action in (
                (p.turn_detection, _TURN, "force_turn_detection"),
                (p.transcription, _TRANSCRIPTION, "force_transcription"),
            ):
                if required is _UNSET:
                    continue
                for path in paths:
                    v = _get(s, path)
                    if v is not _UNSET and v != required:
                        _set(s, path, required)
                        audit.add(pid, action, name(path), etype)
                        changed = True
        return changed

    def _input_items(self, response: dict[str, Any], etype: str, audit: AuditSink) -> bool:
        items = response.get("input")
        if not self.p.block_system or not isinstance(items, list):
            return False
        kept = [x for x in items if not (isinstance(x, Mapping) and x.get("role") == "system")]
        if len(kept) == len(items):
            return False
        if self.p.reject:
            raise _Violation("response.input", "System messages are not allowed by relay policy.")
        response["input"] = kept
        audit.add(self.p.policy_id, "strip_field", "response.input", etype, count=len(items) - len(kept))
        return True

    def _system_item(self, event: Event, audit: AuditSink) -> Verdict | None:
        payload = event.payload()
        item = payload.get("item")
        if not isinstance(item, Mapping) or item.get("role") != "system":
            return None
        audit.add(self.p.policy_id, "reject", "item.role", event.type)
        eid = payload.get("event_id")
        err = error_event(
            "policy_violation",
            "System messages are not allowed by relay policy (the instructions are pinned).",
            param="item.role",
            event_id=eid if isinstance(eid, str) else None,
        )
        return Reply((err,), "policy_violation")

    def _hide(self, event: Event, audit: AuditSink) -> Verdict | None:
        hide = self.p.hide
        session = event.payload().get("session")
        if hide is None or not isinstance(session, Mapping) or "instructions" not in session:
            return None
        if session["instructions"] == hide:
            return None
        audit.add(self.p.policy_id, "hide_instructions", "session.instructions", event.type)
        return Forward(event.with_payload({**event.payload(), "session": {**session, "instructions": hide}}))
