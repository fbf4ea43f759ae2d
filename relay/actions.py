"""What the sans-I/O session core asks the pumps to do.

The core never awaits. Anything that needs I/O comes out of it as an action; the pumps in
``relay.pump`` carry the actions out in order. ``Call`` is the one escape hatch for work that must
talk to the outside world (a shared budget ledger): the pump awaits the thunk (``hold=True``: before
it reads the next frame in that direction) or runs it in the background, then carries out the
actions the thunk returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from relay.events import Direction, Event


@dataclass(slots=True)
class Send:
    """Send ``text`` in direction ``to`` (C2U: to the upstream, U2C: to the client).

    ``event`` is what gets recorded and metered once sent (None: a frame not to record).
    Not frozen: one is made per relayed event, and a frozen dataclass costs twice as much to build.
    """

    to: Direction
    text: str
    event: Event | None = None


@dataclass(slots=True, frozen=True)
class Close:
    """End the session: close the client with ``code``/``reason`` and the upstream with 1000."""

    code: int
    reason: str
    outcome: str = "policy"


@dataclass(slots=True, frozen=True)
class Call:
    """Run async work outside the core and carry out the actions it returns."""

    thunk: Callable[[], Awaitable[Sequence[Action]]]
    hold: bool = True


Action = Send | Close | Call
