"""Events as the relay sees them: a direction, a type and the exact wire text.

Rules of this module:
- No I/O and no asyncio. Everything here is called on the hot path.
- The wire text is the truth. ``Event.text`` is forwarded as it is unless a policy replaces the
  payload, so frames nobody touched pass byte-identical (unknown types, unknown fields, key order).
- Parsing is lazy: ``peek_type`` finds the top-level ``type`` without a JSON parse; ``payload()``
  parses on first use and caches the result.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson


class Direction(enum.IntEnum):
    CLIENT_TO_UPSTREAM = 0
    UPSTREAM_TO_CLIENT = 1

    @property
    def label(self) -> str:
        """The short name used in metrics, logs and recordings."""
        return _DIRECTION_LABELS[self]


C2U = Direction.CLIENT_TO_UPSTREAM
U2C = Direction.UPSTREAM_TO_CLIENT
_DIRECTION_LABELS = {C2U: "client_to_upstream", U2C: "upstream_to_client"}


class Dialect(enum.Enum):
    GA = "ga"
    BETA = "beta"


class FrameError(ValueError):
    """A client frame the relay cannot accept; ``code`` is the relay's error code for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Event:
    direction: Direction
    type: str
    text: str
    seq: int
    recv_ns: int
    _payload: dict[str, Any] | None = field(default=None, repr=False)

    def payload(self) -> dict[str, Any]:
        """The parsed JSON object (parsed once, then cached). Treat it as read-only."""
        p = self._payload
        if p is None:
            loaded = orjson.loads(self.text)
            p = loaded if isinstance(loaded, dict) else {}
            self._payload = p
        return p

    def with_payload(self, payload: dict[str, Any]) -> Event:
        """A new event carrying ``payload``, re-serialised; the original stays untouched."""
        return Event(
            self.direction,
            str(payload.get("type", self.type)),
            orjson.dumps(payload).decode(),
            self.seq,
            self.recv_ns,
            payload,
        )


def string_span(text: str, key: str) -> tuple[int, int] | None:
    """Span of the characters of the top-level string member ``key`` (quotes excluded).

    Found without parsing: ``"key"`` followed by a colon can only be an object key (a quote inside
    a JSON string is escaped), and it is a top-level key if no ``{`` or ``[`` comes before it but
    the opening brace. Anything less certain (nesting before it, an escape inside the value, a
    non-string value) returns None and the caller parses the JSON instead.
    """
    i = text.find(f'"{key}"')
    if i < 0 or text.find("{", 1, i) >= 0 or text.find("[", 0, i) >= 0:
        return None
    j = i + len(key) + 2
    n = len(text)
    while j < n and text[j] in " \t\r\n":
        j += 1
    if j >= n or text[j] != ":":
        return None
    j += 1
    while j < n and text[j] in " \t\r\n":
        j += 1
    if j >= n or text[j] != '"':
        return None
    k = text.find('"', j + 1)
    if k < 0 or text.find("\\", j + 1, k) >= 0:
        return None
    return j + 1, k


def peek_type(text: str) -> str | None:
    """The top-level ``type`` of a JSON object, found without parsing; ``None`` if unsure."""
    span = string_span(text, "type")
    return None if span is None else text[span[0] : span[1]]


def parse_client_frame(text: str, seq: int, now_ns: int) -> Event:
    """Validate a client text frame fully (it is untrusted) and wrap it as an event.

    Raises:
        FrameError: invalid JSON, not an object, or no string ``type``.
    """
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError("invalid_json", f"The frame is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise FrameError("invalid_event", "An event must be a JSON object.")
    etype = payload.get("type")
    if not isinstance(etype, str) or not etype:
        raise FrameError("missing_type", "The event has no string 'type' field.")
    return Event(C2U, etype, text, seq, now_ns, payload)


def parse_upstream_frame(text: str, seq: int, now_ns: int) -> Event:
    """Wrap an upstream text frame; the type is peeked, the body parsed only when asked."""
    etype = peek_type(text)
    if etype is None:
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Event(U2C, "", text, seq, now_ns, {})
        if not isinstance(payload, dict):
            return Event(U2C, "", text, seq, now_ns, {})
        etype = str(payload.get("type", ""))
        return Event(U2C, etype, text, seq, now_ns, payload)
    return Event(U2C, etype, text, seq, now_ns)


def error_event(
    code: str,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An ``error`` server event in OpenAI's shape (both dialects use the same one)."""
    return {
        "type": "error",
        "event_id": new_event_id(),
        "error": {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        },
    }


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_event_id(prefix: str = "event_") -> str:
    """An id shaped like OpenAI's: a prefix and 21 base62 characters."""
    import secrets

    return prefix + "".join(secrets.choice(_B62) for _ in range(21))
