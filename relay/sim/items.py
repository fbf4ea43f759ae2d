"""Conversation items and ids, rendered in either dialect.

Rules of this module:
- ``Item`` is the dialect-free record of a conversation item; ``render_item`` writes the wire
  object. GA assistant parts are ``output_audio`` / ``output_text``; beta ones ``audio`` /
  ``text``. User parts are ``input_audio`` / ``input_text`` in both.
- Audio is kept as wire bytes in the session's format; it is sent only by
  ``conversation.item.retrieved`` (``with_audio=True``), never in other item events.
- Ids look like OpenAI's (``item_`` / ``resp_`` / ``event_`` + base62) but are cheap: a random
  per-process stem plus a counter, so making one costs no entropy call.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_STEM = "".join(secrets.choice(_B62) for _ in range(13))
_COUNTER = itertools.count(1)


def new_id(prefix: str) -> str:
    """``prefix`` + 21 base62 characters, unique within the process."""
    n = next(_COUNTER)
    tail = []
    for _ in range(8):
        n, r = divmod(n, 62)
        tail.append(_B62[r])
    return prefix + _STEM + "".join(reversed(tail))


@dataclass(slots=True)
class Part:
    type: str  # input_text | input_audio | output_text | output_audio (GA names)
    text: str | None = None
    transcript: str | None = None
    audio: bytearray | None = None
    bytes_per_second: int = 48_000  # of ``audio``, for the token rules


@dataclass(slots=True)
class Item:
    id: str
    type: str  # message | function_call | function_call_output
    role: str | None = None
    status: str = "completed"
    content: list[Part] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    version: int = 0  # bumped on truncation; part of the cache key of the item
    heard: str | None = None  # what the simulated model understood of user audio (scripted)

    def text_of(self) -> str:
        """What the model "understands" of a message: texts and transcripts joined."""
        if self.heard is not None:
            return self.heard
        bits = []
        for p in self.content:
            if p.text:
                bits.append(p.text)
            elif p.transcript:
                bits.append(p.transcript)
        return " ".join(bits)


_BETA_PART = {"output_text": "text", "output_audio": "audio"}


def render_part(p: Part, beta: bool, with_audio: bool = False) -> dict[str, Any]:
    ptype = _BETA_PART.get(p.type, p.type) if beta else p.type
    out: dict[str, Any] = {"type": ptype}
    if p.type in ("input_text", "output_text"):
        out["text"] = p.text or ""
    else:
        out["transcript"] = p.transcript
        if with_audio and p.audio is not None:
            out["audio"] = base64.b64encode(p.audio).decode()
    return out


def render_item(item: Item, beta: bool, with_audio: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item.id, "type": item.type, "object": "realtime.item", "status": item.status}
    if item.type == "message":
        out["role"] = item.role
        out["content"] = [render_part(p, beta, with_audio) for p in item.content]
    elif item.type == "function_call":
        out["name"] = item.name
        out["call_id"] = item.call_id
        out["arguments"] = item.arguments or ""
    elif item.type == "function_call_output":
        out["call_id"] = item.call_id
        out["output"] = item.output or ""
    return out
