"""One model response as a stream of event batches, in the dialect of its session.

Rules of this module:
- ``ResponseRun`` is sans-I/O: ``start()`` gives ``response.created`` + ``rate_limits.updated``;
  each ``step()`` gives the next batch and how many milliseconds of audio it carries (the I/O
  layer paces on that); the last batch ends with ``response.done``. ``cancel(reason)`` and
  ``fail(...)`` end it at once with the closing events of whatever is open.
- Event order per output item: ``output_item.added`` (GA: ``conversation.item.added``; beta:
  ``conversation.item.created``), ``content_part.added``, deltas (transcript words interleaved
  ahead of the audio they belong to), ``*.done``, ``content_part.done``, ``output_item.done``
  (GA: ``conversation.item.done``), then ``response.done``.
- Usage is computed at the end from what was actually sent (see relay.sim.usage), so cancelled
  and incomplete responses bill only their generated part. Generation stops before the first
  delta that would take the output tokens above ``max_output_tokens`` (status ``incomplete``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from relay.sim import tts
from relay.sim.audio import AudioFormat, encode_pcm24k
from relay.sim.items import Item, Part, new_id, render_item
from relay.sim.reply import Plan
from relay.sim.usage import Segment, output_audio_tokens, response_usage, text_tokens

if TYPE_CHECKING:
    from relay.sim.session import SimSession

_WORD = re.compile(r"\S+\s*")


@lru_cache(maxsize=64)
def audio_chunks(
    text: str, voice: str, speed: float, source: str, fmt: AudioFormat, delta_ms: int
) -> tuple[tuple[str, bytes], ...]:
    """The reply audio cut into ``delta_ms`` pieces, each as (base64, raw wire bytes)."""
    wire = encode_pcm24k(tts.synthesize(text, voice, speed, source), fmt)
    size = max(1, int(delta_ms * fmt.bytes_per_ms))
    size -= size % fmt.bytes_per_sample
    return tuple(
        (base64.b64encode(wire[i : i + size]).decode(), wire[i : i + size]) for i in range(0, len(wire), size)
    )


@dataclass(slots=True)
class RunParams:
    plan: Plan
    modalities: list[str]
    voice: str
    speed: float
    out_format: AudioFormat
    segments: list[Segment]
    in_conversation: bool = True
    metadata: dict[str, Any] | None = None
    max_output_tokens: Any = "inf"
    temperature: float = 0.8
    source: str = "espeak"
    delta_ms: int = 100
    voice_field: Any = None  # the session's voice value as configured (may be {"id": ...})
    extra: dict[str, Any] = field(default_factory=dict)


class ResponseRun:
    def __init__(self, sess: SimSession, params: RunParams) -> None:
        self.sess = sess
        self.p = params
        self.id = new_id("resp_")
        self.output: list[Item] = []
        self.cur: Item | None = None
        self.part: Part | None = None
        self.sent_text = ""
        self.sent_audio = 0
        self.status: tuple[str, str | None] = ("completed", None)
        self.finished = False
        self._gen = self._body()
        self.names = _GA_NAMES if not sess.beta else _BETA_NAMES

    # --- public ---------------------------------------------------------------------------------

    def start(self) -> list[dict[str, Any]]:
        return [
            self.sess.ev("response.created", response=self.render("in_progress", None, None)),
            self.sess.rate_limits_event(),
        ]

    def step(self) -> tuple[list[dict[str, Any]], float]:
        """The next batch and its audio milliseconds; the final batch ends with response.done."""
        if self.finished:
            return [], 0.0
        try:
            return next(self._gen)
        except StopIteration:
            status, reason = self.status
            return self._finish(status, reason), 0.0

    def cancel(self, reason: str) -> list[dict[str, Any]]:
        self._gen.close()
        return self._finish("cancelled", reason)

    def fail(self, code: str, message: str) -> list[dict[str, Any]]:
        self._gen.close()
        return self._finish("failed", None, {"type": "server_error", "code": code, "message": message})

    @property
    def item_ids(self) -> set[str]:
        return {i.id for i in self.output}

    # --- rendering ------------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        out_audio = output_audio_tokens(self.sent_audio, int(self.p.out_format.bytes_per_ms * 1000))
        prev = self.sess.previous_segments
        return response_usage(
            self.p.segments, prev, text_tokens(self.sent_text), out_audio, beta=self.sess.beta
        )

    def render(
        self, status: str, details: dict[str, Any] | None, usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        beta = self.sess.beta
        resp: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": details,
            "output": [render_item(i, beta) for i in self.output],
            "conversation_id": self.sess.conversation_id if self.p.in_conversation else None,
        }
        if beta:
            resp["modalities"] = ["audio", "text"] if self.p.modalities == ["audio"] else ["text"]
            resp["voice"] = self.p.voice
            resp["output_audio_format"] = self.p.out_format.kind
            resp["temperature"] = self.p.temperature
            resp["max_output_tokens"] = self.p.max_output_tokens
        else:
            resp["output_modalities"] = list(self.p.modalities)
            resp["max_output_tokens"] = self.p.max_output_tokens
            resp["audio"] = {
                "output": {"format": self.p.out_format.ga(), "voice": self.p.voice_field or self.p.voice}
            }
        resp["usage"] = usage
        resp["metadata"] = self.p.metadata
        return resp

    # --- generation -----------------------------------------------------------------------------

    def _over(self, more_text: str, more_bytes: int) -> bool:
        limit = self.p.max_output_tokens
        if not isinstance(limit, int):
            return False
        bps = int(self.p.out_format.bytes_per_ms * 1000)
        total = text_tokens(self.sent_text + more_text) + output_audio_tokens(
            self.sent_audio + more_bytes, bps
        )
        if total > limit:
            self.status = ("incomplete", "max_output_tokens")
            return True
        return False

    def _ids(self, item: Item) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": item.id, "output_index": len(self.output) - 1}

    def _open_item(self, item: Item) -> list[dict[str, Any]]:
        self.output.append(item)
        self.cur = item
        s = self.sess
        events = [
            s.ev(
                "response.output_item.added",
                response_id=self.id,
                output_index=len(self.output) - 1,
                item=render_item(item, s.beta),
            )
        ]
        if self.p.in_conversation:
            prev = s.insert_item(item, None)
            name = "conversation.item.created" if s.beta else "conversation.item.added"
            events.append(s.ev(name, previous_item_id=prev, item=render_item(item, s.beta)))
        return events

    def _close_item(self, status: str) -> list[dict[str, Any]]:
        item, part, s = self.cur, self.part, self.sess
        if item is None:
            return []
        events: list[dict[str, Any]] = []
        ids = self._ids(item)
        if part is not None:
            if part.type == "output_audio":
                events.append(s.ev(self.names["audio_done"], **ids, content_index=0))
                events.append(
                    s.ev(self.names["tr_done"], **ids, content_index=0, transcript=part.transcript or "")
                )
                done_part = {"type": "audio", "transcript": part.transcript or ""}
            else:
                events.append(s.ev(self.names["text_done"], **ids, content_index=0, text=part.text or ""))
                done_part = {"type": "text", "text": part.text or ""}
            events.append(s.ev("response.content_part.done", **ids, content_index=0, part=done_part))
        elif item.type == "function_call":
            extra = {} if s.beta else {"name": item.name}
            events.append(
                s.ev(
                    "response.function_call_arguments.done",
                    **ids,
                    call_id=item.call_id,
                    arguments=item.arguments or "",
                    **extra,
                )
            )
        item.status = status
        rendered = render_item(item, s.beta)
        events.append(
            s.ev(
                "response.output_item.done",
                response_id=self.id,
                output_index=ids["output_index"],
                item=rendered,
            )
        )
        if self.p.in_conversation and not s.beta:
            events.append(
                s.ev("conversation.item.done", previous_item_id=s.previous_of(item.id), item=rendered)
            )
        self.cur = self.part = None
        return events

    def _finish(
        self, status: str, reason: str | None, error: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        self.finished = True
        events = self._close_item("completed" if status == "completed" else "incomplete")
        details: dict[str, Any] | None = None
        if status in ("cancelled", "incomplete"):
            details = {"type": status, "reason": reason}
        elif status == "failed":
            details = {"type": "failed", "error": error}
        events.append(self.sess.ev("response.done", response=self.render(status, details, self.usage())))
        self.sess.response_finished(self)
        return events

    def _body(self) -> Generator[tuple[list[dict[str, Any]], float], None, None]:
        plan = self.p.plan
        if plan.kind == "function_call":
            yield from self._function_call(plan)
        elif self.p.modalities == ["text"]:
            yield from self._text(plan.text)
        else:
            yield from self._audio(plan.text)

    def _function_call(self, plan: Plan) -> Generator[tuple[list[dict[str, Any]], float], None, None]:
        item = Item(
            new_id("item_"),
            "function_call",
            status="in_progress",
            call_id=new_id("call_"),
            name=plan.name,
            arguments="",
        )
        yield self._open_item(item), 0.0
        self.sent_text = plan.name
        args = plan.arguments
        for i in range(0, len(args), 16):
            chunk = args[i : i + 16]
            if self._over(chunk, 0):
                return
            item.arguments = (item.arguments or "") + chunk
            self.sent_text += chunk
            yield (
                [
                    self.sess.ev(
                        "response.function_call_arguments.delta",
                        **self._ids(item),
                        call_id=item.call_id,
                        delta=chunk,
                    )
                ],
                0.0,
            )
        yield self._close_item("completed"), 0.0

    def _text(self, text: str) -> Generator[tuple[list[dict[str, Any]], float], None, None]:
        item = Item(new_id("item_"), "message", role="assistant", status="in_progress")
        events = self._open_item(item)
        self.part = Part("output_text", text="")
        item.content.append(self.part)
        events.append(
            self.sess.ev(
                "response.content_part.added",
                **self._ids(item),
                content_index=0,
                part={"type": "text", "text": ""},
            )
        )
        yield events, 0.0
        for word in _WORD.findall(text):
            if self._over(word, 0):
                return
            self.part.text = (self.part.text or "") + word
            self.sent_text += word
            yield (
                [self.sess.ev(self.names["text_delta"], **self._ids(item), content_index=0, delta=word)],
                0.0,
            )
        yield self._close_item("completed"), 0.0

    def _audio(self, text: str) -> Generator[tuple[list[dict[str, Any]], float], None, None]:
        p = self.p
        item = Item(new_id("item_"), "message", role="assistant", status="in_progress")
        events = self._open_item(item)
        part = self.part = Part("output_audio", transcript="", audio=bytearray())
        part.bytes_per_second = int(p.out_format.bytes_per_ms * 1000)
        item.content.append(part)
        events.append(
            self.sess.ev(
                "response.content_part.added",
                **self._ids(item),
                content_index=0,
                part={"type": "audio", "transcript": ""},
            )
        )
        yield events, 0.0
        chunks = audio_chunks(text, p.voice, p.speed, p.source, p.out_format, p.delta_ms)
        words = _WORD.findall(text)
        n = len(chunks)
        said = 0
        for i, (b64, raw) in enumerate(chunks):
            upto = -(-(i + 1) * len(words) // n) if n else len(words)
            new_words = "".join(words[said:upto])
            if self._over(new_words, len(raw)):
                return
            batch = []
            ids = self._ids(item)
            for w in words[said:upto]:
                batch.append(self.sess.ev(self.names["tr_delta"], **ids, content_index=0, delta=w))
            said = upto
            part.transcript = (part.transcript or "") + new_words
            self.sent_text += new_words
            batch.append(self.sess.ev(self.names["audio_delta"], **ids, content_index=0, delta=b64))
            part.audio.extend(raw)  # type: ignore[union-attr]
            self.sent_audio += len(raw)
            self.sess.audio_produced = True
            yield batch, p.out_format.duration_ms(len(raw))
        yield self._close_item("completed"), 0.0


_GA_NAMES = {
    "audio_delta": "response.output_audio.delta",
    "audio_done": "response.output_audio.done",
    "tr_delta": "response.output_audio_transcript.delta",
    "tr_done": "response.output_audio_transcript.done",
    "text_delta": "response.output_text.delta",
    "text_done": "response.output_text.done",
}
_BETA_NAMES = {
    "audio_delta": "response.audio.delta",
    "audio_done": "response.audio.done",
    "tr_delta": "response.audio_transcript.delta",
    "tr_done": "response.audio_transcript.done",
    "text_delta": "response.text.delta",
    "text_done": "response.text.done",
}
