"""Reading the client's upgrade request: credentials, dialect, subprotocols.

Rules of this module:
- Pure functions over header values; no I/O, no policy lookups.
- Credentials come from ``Authorization: Bearer``, ``api-key`` (Azure style) or the browser
  subprotocol ``openai-insecure-api-key.<key>``. They are returned to the caller for a hash
  lookup and never kept.
- The dialect is decided once per connection: beta if ``OpenAI-Beta`` contains ``realtime=v1``
  or the subprotocol ``openai-beta.realtime-v1`` is offered; otherwise GA.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.events import Dialect

KEY_SUBPROTOCOL = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
ANSWER_SUBPROTOCOL = "realtime"


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def client_key(headers: Mapping[str, str], subprotocols: list[str]) -> str | None:
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        key = auth[7:].strip()
        if key:
            return key
    api_key = headers.get("api-key", "").strip()
    if api_key:
        return api_key
    for proto in subprotocols:
        if proto.startswith(KEY_SUBPROTOCOL):
            return proto[len(KEY_SUBPROTOCOL) :] or None
    return None


def detect_dialect(headers: Mapping[str, str], subprotocols: list[str]) -> Dialect:
    beta_header = headers.get("OpenAI-Beta", "").lower().replace(" ", "")
    if "realtime=v1" in beta_header or BETA_SUBPROTOCOL in subprotocols:
        return Dialect.BETA
    return Dialect.GA


def requested_model(query: Mapping[str, str]) -> str:
    """The model named on the URL (``deployment`` is Azure's name for it)."""
    return query.get("model") or query.get("deployment") or ""
