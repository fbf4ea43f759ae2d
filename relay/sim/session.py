"""The simulated Realtime session: client event text in, server event dicts out.

Rules of this module:
- Sans-I/O and single-threaded: ``open()``, ``handle(text)``, ``step()`` and ``expire()`` return
  the events to send, in order. The I/O layer (relay.sim.server) sends them and paces ``step()``
  by the audio milliseconds it reports. Nothing here sleeps or reads a clock except the injected
  ``now`` (for ``expires_at``).
- One response at a time may run (``conversation_already_has_active_response`` otherwise), also
  for ``conversation: "none"`` responses (a simplification, documented).
- Errors are OpenAI-shaped ``error`` events with the offending client ``event_id``; they never
  change state. Audio positions come from bytes received, never from wall time.
- What the model "hears" in user audio comes from ``transcribe(duration_ms)`` (a scripted table
  owned by the server); transcription events are sent only when transcription is configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from relay.sim import sessionconfig as sc
from relay.sim.inputaudio import InputAudioMixin
from relay.sim.items import Item, new_id, render_item
from relay.sim.parse import ClientError, item_from_client, response_params
from relay.sim.reply import plan_reply
from relay.sim.response import ResponseRun
from relay.sim.usage import Segment

CLIENT_EVENTS = (
    "session.update", "transcription_session.update", "input_audio_buffer.append",
    "input_audio_buffer.commit", "input_audio_buffer.clear", "conversation.item.create",
    "conversation.item.retrieve", "conversation.item.truncate", "conversation.item.delete",
    "response.create", "response.cancel", "output_audio_buffer.clear",
)  # fmt: skip
Event = dict[str, Any]


@dataclass(slots=True)
class SessionOptions:
    voice_source: str = "espeak"
    delta_ms: int = 100
    fixed_reply: str | None = None
    tokens_per_minute: int = 40_000


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute" + ("s" if minutes != 1 else "")
    return f"{seconds:g} seconds"


def default_transcript(duration_ms: int) -> str:
    return f"(speech {duration_ms / 1000:.1f} s)"


class SimSession(InputAudioMixin):
    def __init__(
        self,
        *,
        beta: bool = False,
        model: str = "gpt-realtime",
        kind: str = "realtime",
        options: SessionOptions | None = None,
        transcribe: Callable[[int], str] = default_transcript,
        now: Callable[[], float] = time.time,
        max_session_seconds: float = 3600.0,
    ) -> None:
        self.beta = beta
        self.kind = kind
        self.opts = options or SessionOptions()
        self.transcribe = transcribe
        self.now = now
        self.max_session_seconds = max_session_seconds
        expires = int(now() + max_session_seconds)
        self.cfg = sc.default_session(new_id("sess_"), model, kind, expires)
        self.beta_extra: dict[str, Any] = {}
        self.conversation_id = new_id("conv_")
        self.items: list[Item] = []
        self.active: ResponseRun | None = None
        self.previous_segments: list[Segment] | None = None
        self.audio_produced = False
        self.tokens_used = 0
        self._event_id: str | None = None
        # Input audio: the buffer holds wire bytes from position ``buf_start_ms`` on.
        self.buffer = bytearray()
        self.buf_start_ms = 0
        self.received_ms = 0.0
        self._vad_origin_ms = 0
        self._speech_item: str | None = None
        self._speech_start_ms = 0
        self.vad = self._new_vad()

    # --- helpers used by ResponseRun ------------------------------------------------------------

    def ev(self, etype: str, **fields: Any) -> Event:
        return {"type": etype, "event_id": new_id("event_"), **fields}

    def rate_limits_event(self) -> Event:
        limit = self.opts.tokens_per_minute
        remaining = max(0, limit - self.tokens_used)
        limits = [{"name": "tokens", "limit": limit, "remaining": remaining, "reset_seconds": 0.6}]
        if self.beta:
            limits.insert(0, {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012})
        return self.ev("rate_limits.updated", rate_limits=limits)

    def insert_item(self, item: Item, previous_item_id: str | None) -> str | None:
        """Add ``item`` after ``previous_item_id`` (end of the conversation when None)."""
        if previous_item_id is None:
            self.items.append(item)
        elif previous_item_id == "root":
            self.items.insert(0, item)
        else:
            idx = next(i for i, it in enumerate(self.items) if it.id == previous_item_id)
            self.items.insert(idx + 1, item)
        return self.previous_of(item.id)

    def previous_of(self, item_id: str) -> str | None:
        prev = None
        for it in self.items:
            if it.id == item_id:
                return prev
            prev = it.id
        return prev

    def response_finished(self, run: ResponseRun) -> None:
        if self.active is run:
            self.active = None
        self.previous_segments = run.p.segments
        usage = run.usage()
        self.tokens_used += usage["total_tokens"]

    # --- public ---------------------------------------------------------------------------------

    def render_session(self) -> dict[str, Any]:
        return sc.render(self.cfg, self.beta, self.beta_extra)

    def open(self) -> list[Event]:
        return [self.ev("session.created", session=self.render_session())]

    def handle(self, text: str) -> list[Event]:
        """Process one client text frame."""
        self._event_id = None
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return [self.error("invalid_json", f"We could not parse the JSON body of your request. ({exc})")]
        if not isinstance(data, dict):
            return [self.error("invalid_json", "The event must be a JSON object.")]
        eid = data.get("event_id")
        self._event_id = eid if isinstance(eid, str) else None
        etype = data.get("type")
        if not isinstance(etype, str):
            return [self.error("missing_required_parameter", "Missing required parameter: 'type'.", "type")]
        handler = _HANDLERS.get(etype)
        if handler is None or (etype == "transcription_session.update" and not self.beta):
            return [
                self.error(
                    "invalid_value",
                    f"Invalid value: '{etype}'. Supported values are: {', '.join(repr(c) for c in CLIENT_EVENTS)}.",
                    "type",
                )
            ]
        try:
            return handler(self, data)
        except sc.SessionError as exc:
            return [self.error(exc.code, exc.message, exc.param)]
        except ClientError as exc:
            return [self.error(exc.code, exc.message, exc.param)]
        except Exception as exc:  # a simulator bug must not kill the connection; make it visible
            err = self.error("server_error", f"Simulator failure: {type(exc).__name__}: {exc}")
            err["error"]["type"] = "server_error"
            return [err]

    def step(self) -> tuple[list[Event], float] | None:
        """The next batch of the active response, or None when no response is running."""
        run = self.active
        if run is None:
            return None
        return run.step()

    def expire(self) -> list[Event]:
        """The session hit its maximum duration: the error OpenAI sends before closing."""
        events = self.active.cancel("client_cancelled") if self.active else []
        events.append(
            self.error(
                "session_expired",
                f"Your session hit the maximum duration of {_duration(self.max_session_seconds)}.",
                event_id=None,
            )
        )
        return events

    def error(
        self, code: str | None, message: str, param: str | None = None, *, event_id: str | None | bool = True
    ) -> Event:
        eid = self._event_id if event_id is True else event_id
        return self.ev(
            "error",
            error={
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": eid,
            },
        )

    # --- session --------------------------------------------------------------------------------

    def _session_update(self, data: dict[str, Any]) -> list[Event]:
        if "session" not in data:
            raise ClientError(
                "missing_required_parameter", "Missing required parameter: 'session'.", "session"
            )
        old_fmt = self.in_format
        if self.beta:
            extra = dict(self.beta_extra)
            new = sc.apply_beta(self.cfg, data["session"], self.audio_produced, extra)
            self.beta_extra = extra
        else:
            new = sc.apply_ga(self.cfg, data["session"], self.audio_produced)
        self.cfg = new
        if self.in_format != old_fmt:
            self._vad_origin_ms = int(self.received_ms)
            self.buffer.clear()
            self.buf_start_ms = self._vad_origin_ms
            self.vad = self._new_vad()
        else:
            self._configure_vad()
        name = (
            "transcription_session.updated"
            if data["type"] == "transcription_session.update"
            else "session.updated"
        )
        return [self.ev(name, session=self.render_session())]

    def _item_events(self, item: Item, prev: str | None) -> list[Event]:
        rendered = render_item(item, self.beta)
        if self.beta:
            return [self.ev("conversation.item.created", previous_item_id=prev, item=rendered)]
        return [
            self.ev("conversation.item.added", previous_item_id=prev, item=rendered),
            self.ev("conversation.item.done", previous_item_id=prev, item=rendered),
        ]

    # --- conversation ---------------------------------------------------------------------------

    def _find(self, item_id: Any, code: str, verb: str) -> Item:
        for it in self.items:
            if it.id == item_id:
                return it
        raise ClientError(code, f"Error {verb} item: the item with id '{item_id}' does not exist.", "item_id")

    def _item_create(self, data: dict[str, Any]) -> list[Event]:
        raw = data.get("item")
        if not isinstance(raw, dict):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        prev_id = data.get("previous_item_id")
        if prev_id is not None and prev_id != "root" and all(it.id != prev_id for it in self.items):
            raise ClientError(
                "invalid_value",
                f"Invalid 'previous_item_id': no item with id '{prev_id}'.",
                "previous_item_id",
            )
        item = item_from_client(raw, self.beta, self.in_format, self.transcribe)
        if any(it.id == item.id for it in self.items):
            raise ClientError("invalid_value", f"Item with id '{item.id}' already exists.", "item.id")
        prev = self.insert_item(item, prev_id)
        return self._item_events(item, prev)

    def _item_delete(self, data: dict[str, Any]) -> list[Event]:
        item = self._find(data.get("item_id"), "item_delete_invalid_item_id", "deleting")
        self.items.remove(item)
        return [self.ev("conversation.item.deleted", item_id=item.id)]

    def _item_retrieve(self, data: dict[str, Any]) -> list[Event]:
        item = self._find(data.get("item_id"), "item_retrieve_invalid_item_id", "retrieving")
        return [self.ev("conversation.item.retrieved", item=render_item(item, self.beta, with_audio=True))]

    def _item_truncate(self, data: dict[str, Any]) -> list[Event]:
        item = self._find(data.get("item_id"), "item_truncate_invalid_item_id", "truncating")
        idx = data.get("content_index", 0)
        end = data.get("audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool) or end < 0:
            raise ClientError(
                "invalid_value", "Invalid 'audio_end_ms': expected a non-negative integer.", "audio_end_ms"
            )
        if item.role != "assistant" or not isinstance(idx, int) or not 0 <= idx < len(item.content):
            raise ClientError(
                "invalid_value", "Only assistant audio content can be truncated.", "content_index"
            )
        part = item.content[idx]
        if part.type != "output_audio" or part.audio is None:
            raise ClientError(
                "invalid_value", "Only assistant audio content can be truncated.", "content_index"
            )
        if self.active is not None and item.id in self.active.item_ids:
            raise ClientError(
                "invalid_value", "Cannot truncate an item of a response in progress.", "item_id"
            )
        bps = part.bytes_per_second
        duration = len(part.audio) * 1000 / bps
        if end > duration:
            raise ClientError(
                "invalid_value",
                f"Audio content of {duration:.0f}ms is shorter than the requested audio_end_ms of {end}ms.",
                "audio_end_ms",
            )
        keep = end * bps // 1000
        keep -= keep % (2 if bps == 48_000 else 1)
        del part.audio[keep:]
        part.transcript = ""
        item.version += 1
        return [self.ev("conversation.item.truncated", item_id=item.id, content_index=idx, audio_end_ms=end)]

    # --- responses ------------------------------------------------------------------------------

    def _response_create(self, data: dict[str, Any]) -> list[Event]:
        if self.kind != "realtime":
            raise ClientError(
                "invalid_value", "Responses are not supported in transcription sessions.", "type"
            )
        if self.active is not None:
            raise ClientError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        resp = data.get("response") or {}
        if not isinstance(resp, dict):
            raise ClientError("invalid_value", "Invalid 'response': expected an object.", "response")
        return self._start_response(resp)

    def _start_response(self, resp: dict[str, Any]) -> list[Event]:
        params = response_params(self, resp)
        run = ResponseRun(self, params)
        self.active = run
        return run.start()

    def context_for(self, resp: dict[str, Any]) -> list[Item]:
        if "input" not in resp:
            return list(self.items)
        ctx: list[Item] = []
        raw = resp["input"]
        if not isinstance(raw, list):
            raise ClientError(
                "invalid_value", "Invalid 'response.input': expected an array.", "response.input"
            )
        for i, entry in enumerate(raw):
            if isinstance(entry, dict) and entry.get("type") == "item_reference":
                ctx.append(self._find(entry.get("id"), "invalid_value", "referencing"))
            elif isinstance(entry, dict):
                ctx.append(item_from_client(entry, self.beta, self.in_format, self.transcribe))
            else:
                raise ClientError("invalid_value", "Invalid input item.", f"response.input[{i}]")
        return ctx

    def plan(
        self, context: list[Item], tools: list[dict[str, Any]], tool_choice: Any, instr: str | None
    ) -> Any:
        return plan_reply(context, tools, tool_choice, instr, self.opts.fixed_reply)

    def _response_cancel(self, data: dict[str, Any]) -> list[Event]:
        rid = data.get("response_id")
        if self.active is None or (rid is not None and rid != self.active.id):
            raise ClientError("response_cancel_not_active", "Cancellation failed: no active response found.")
        return self.active.cancel("client_cancelled")

    def _output_audio_clear(self, data: dict[str, Any]) -> list[Event]:
        raise ClientError(
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
            "type",
        )


_HANDLERS: dict[str, Callable[[SimSession, dict[str, Any]], list[Event]]] = {
    "session.update": SimSession._session_update,
    "transcription_session.update": SimSession._session_update,
    "input_audio_buffer.append": SimSession._append,
    "input_audio_buffer.commit": SimSession._commit,
    "input_audio_buffer.clear": SimSession._clear,
    "conversation.item.create": SimSession._item_create,
    "conversation.item.delete": SimSession._item_delete,
    "conversation.item.retrieve": SimSession._item_retrieve,
    "conversation.item.truncate": SimSession._item_truncate,
    "response.create": SimSession._response_create,
    "response.cancel": SimSession._response_cancel,
    "output_audio_buffer.clear": SimSession._output_audio_clear,
}
