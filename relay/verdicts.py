"""What a policy answers for one event, and the audit records policies leave behind.

A verdict is a closed union, narrowed with ``match`` or ``isinstance``:
- ``Forward(event)``: pass the event on; ``None`` means unchanged, otherwise the replacement is
  what the next policy sees and what is sent.
- ``Drop(reason)``: swallow the event silently (it is still audited).
- ``Reply(events, reason)``: do not forward; send ``events`` (payload dicts) back to the source.
- ``Terminate(code, reason, events)``: end the session after sending ``events`` to the client.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from relay.events import Event


@dataclass(slots=True, frozen=True)
class Forward:
    event: Event | None = None


@dataclass(slots=True, frozen=True)
class Drop:
    reason: str


@dataclass(slots=True, frozen=True)
class Reply:
    events: tuple[dict[str, Any], ...]
    reason: str


@dataclass(slots=True, frozen=True)
class Terminate:
    code: int = 1008
    reason: str = "policy violation"
    events: tuple[dict[str, Any], ...] = ()


Verdict = Forward | Drop | Reply | Terminate

FORWARD_UNCHANGED = Forward()


@dataclass(slots=True, frozen=True)
class AuditRecord:
    """One action a policy (or the budget guard) took: recorded and counted, never the value.

    ``kind`` is ``policy`` or ``budget``; ``source`` the policy id or budget name; ``action`` what
    was done (``redact``, ``strip_tool``, ``reject``, ``pin_instructions``, ``warn``, ...);
    ``field`` the JSON path touched; ``detail`` small extra facts (counts, labels), never content.
    """

    kind: str
    source: str
    action: str
    field: str = ""
    event_type: str = ""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
