"""Latencies a caller feels, measured from the events the relay forwards (sans-I/O).

``LatencyTracker`` is fed every event of one session *after* it went out, with the monotonic time
it was sent (``now_ns``), and observes two durations:

- **first audio** (``relay_first_audio_seconds``): from the end of the caller's turn to the first
  output audio delta reaching the client. The turn ends at the earliest of
  ``input_audio_buffer.speech_stopped`` (upstream → client, when it reached the client),
  ``input_audio_buffer.commit`` or ``response.create`` (client → upstream, when they reached
  upstream), and the observation is taken at the first audio delta of the next response. One
  observation per turn: later deltas of the same answer are ignored.
- **tool call** (``relay_tool_call_seconds``): from ``response.function_call_arguments.done``
  reaching the client to the client's ``conversation.item.create`` carrying a
  ``function_call_output`` item with the same ``call_id``.

Rules of this module:
- No I/O, no clock: time comes in as ``now_ns``; results go out through two ``Observer`` objects
  (a prometheus histogram child, or a fake in tests).
- Hot path: an event whose type the tracker does not watch costs one frozenset lookup. Of the
  watched ones, only ``response.function_call_arguments.done`` and ``conversation.item.create``
  are parsed (client events are parsed at the handshake anyway); audio deltas never are.
- Direction is checked: a client cannot fake an audio delta or a function call to move a metric.
- Turn bookkeeping:
  * Only the first audio delta of a response (after ``response.created``) can end a wait, so a
    turn end that arrives while an answer is still streaming is measured against the next one.
  * ``input_audio_buffer.speech_started`` discards a pending turn end: the caller is talking again,
    so the earlier stop did not end the turn.
  * A response that ends (``response.done``) without audio and without a function call ends the
    turn unobserved (a text-only or failed answer has no "first audio"). A response that called a
    function keeps the turn open: the caller is still waiting for the spoken answer, so the tool
    round trip is part of the delay they feel (``relay_tool_call_seconds`` isolates it).
- Memory is bounded: at most ``MAX_PENDING_CALLS`` unanswered function calls are remembered; the
  oldest is forgotten first.
"""

from __future__ import annotations

from typing import Any, Protocol

from relay.events import C2U, U2C, Event

MAX_PENDING_CALLS = 64


class Observer(Protocol):
    """Anything that takes a sample: a prometheus ``Histogram`` child, or a test fake."""

    def observe(self, amount: float) -> None: ...


_TURN_END_CLIENT = frozenset({"input_audio_buffer.commit", "response.create"})
_AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
_FUNCTION_CALL_DONE = "response.function_call_arguments.done"
_ITEM_CREATE = "conversation.item.create"
_SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
_SPEECH_STARTED = "input_audio_buffer.speech_started"
_RESPONSE_DONE = "response.done"
_RESPONSE_CREATED = "response.created"

# Watched types per direction, indexed by ``Direction`` (an IntEnum: C2U == 0, U2C == 1).
_WATCHED: tuple[frozenset[str], frozenset[str]] = (
    _TURN_END_CLIENT | {_ITEM_CREATE},
    _AUDIO_DELTA | {_SPEECH_STOPPED, _SPEECH_STARTED, _FUNCTION_CALL_DONE, _RESPONSE_CREATED, _RESPONSE_DONE},
)
assert C2U == 0 and U2C == 1


class LatencyTracker:
    """Per-session state for the first-audio and tool-call latencies."""

    __slots__ = (
        "_first_audio",
        "_tool_call",
        "_turn_end_ns",
        "_audio_in_response",
        "_call_in_response",
        "_pending_calls",
    )

    def __init__(self, first_audio: Observer, tool_call: Observer) -> None:
        self._first_audio = first_audio
        self._tool_call = tool_call
        self._turn_end_ns: int | None = None
        """When the caller's current turn ended; None while no answer is awaited."""
        self._audio_in_response = False
        """Output audio of the current response has reached the client already."""
        self._call_in_response = False
        """The current response called a function (the turn stays open through the tool call)."""
        self._pending_calls: dict[str, int] = {}
        """call_id → when its ``function_call_arguments.done`` reached the client (insertion order)."""

    def on_event(self, event: Event, now_ns: int) -> None:
        """Account for ``event``, which has just been sent to the other side at ``now_ns``."""
        etype = event.type
        if etype not in _WATCHED[event.direction]:
            return
        if etype in _AUDIO_DELTA:
            if self._audio_in_response:
                return
            self._audio_in_response = True
            start = self._turn_end_ns
            if start is not None:
                self._turn_end_ns = None
                self._first_audio.observe(max(0, now_ns - start) / 1e9)
        elif event.direction is C2U:
            if etype == _ITEM_CREATE:
                self._on_item_create(event.payload(), now_ns)
            elif self._turn_end_ns is None:
                self._turn_end_ns = now_ns
        elif etype == _SPEECH_STOPPED:
            if self._turn_end_ns is None:
                self._turn_end_ns = now_ns
        elif etype == _SPEECH_STARTED:
            self._turn_end_ns = None
        elif etype == _RESPONSE_DONE:
            if not self._audio_in_response and not self._call_in_response:
                self._turn_end_ns = None
            self._audio_in_response = False
            self._call_in_response = False
        elif etype == _RESPONSE_CREATED:
            self._audio_in_response = False
            self._call_in_response = False
        else:  # _FUNCTION_CALL_DONE
            self._on_function_call(event.payload(), now_ns)

    @property
    def awaiting_audio(self) -> bool:
        """True while a caller's turn has ended and no output audio has reached them yet."""
        return self._turn_end_ns is not None

    @property
    def pending_calls(self) -> int:
        """Function calls sent to the client and not answered yet."""
        return len(self._pending_calls)

    def _on_function_call(self, payload: dict[str, Any], now_ns: int) -> None:
        self._call_in_response = True
        call_id = payload.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            return
        pending = self._pending_calls
        if call_id not in pending and len(pending) >= MAX_PENDING_CALLS:
            del pending[next(iter(pending))]
        pending[call_id] = now_ns

    def _on_item_create(self, payload: dict[str, Any], now_ns: int) -> None:
        item = payload.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call_output":
            return
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            return
        start = self._pending_calls.pop(call_id, None)
        if start is not None:
            self._tool_call.observe(max(0, now_ns - start) / 1e9)
