"""Where text lives in Realtime events, by field kind, for both dialects.

Field kinds (the ``fields:`` names of the redact policy):
``item_text`` (user/system text in conversation items), ``instructions``, ``input_transcript``,
``output_transcript``, ``output_text``, ``function_arguments`` (function and MCP call arguments),
``function_output`` (function_call_output and MCP call output).

- ``WHOLE``: event types carrying complete values, with the paths to them.
- ``STREAMS``: delta event types (one fragment per event) and the ``.done`` types that close them.
- ``rewrite`` rewrites the text slots of one event on a fresh copy and returns the new event, or
  None when nothing changed (the original payload is never mutated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from relay.events import C2U, U2C, Direction, Event

FIELD_KINDS = (
    "item_text",
    "instructions",
    "input_transcript",
    "output_transcript",
    "output_text",
    "function_arguments",
    "function_output",
)

Path = tuple[str | int, ...]
# ("item",) marks a conversation item to walk; ("items", key) a list of them under key.
_ITEM = "item"
_ITEMS = "items"


@dataclass(frozen=True, slots=True)
class Site:
    path: tuple[str, ...]
    kind: str  # a field kind, or _ITEM / _ITEMS


WHOLE: dict[str, tuple[Direction, tuple[Site, ...]]] = {}


def _whole(direction: Direction, types: tuple[str, ...], *sites: Site) -> None:
    for t in types:
        WHOLE[t] = (direction, sites)


_whole(C2U, ("conversation.item.create",), Site(("item",), _ITEM))
_whole(C2U, ("session.update",), Site(("session", "instructions"), "instructions"))
_whole(
    C2U,
    ("response.create",),
    Site(("response", "instructions"), "instructions"),
    Site(("response", "input"), _ITEMS),
)
_whole(U2C, ("session.created", "session.updated"), Site(("session", "instructions"), "instructions"))
_whole(
    U2C,
    (
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.created",
        "conversation.item.retrieved",
        "response.output_item.added",
        "response.output_item.done",
    ),
    Site(("item",), _ITEM),
)
_whole(
    U2C,
    ("response.content_part.added", "response.content_part.done"),
    Site(("part", "text"), "output_text"),
    Site(("part", "transcript"), "output_transcript"),
)
_whole(U2C, ("response.done",), Site(("response", "output"), _ITEMS))
_whole(U2C, ("response.output_text.done", "response.text.done"), Site(("text",), "output_text"))
_whole(
    U2C,
    ("response.output_audio_transcript.done", "response.audio_transcript.done"),
    Site(("transcript",), "output_transcript"),
)
_whole(
    U2C,
    ("response.function_call_arguments.done", "response.mcp_call_arguments.done"),
    Site(("arguments",), "function_arguments"),
)
_whole(
    U2C, ("conversation.item.input_audio_transcription.completed",), Site(("transcript",), "input_transcript")
)
_whole(U2C, ("conversation.item.input_audio_transcription.segment",), Site(("text",), "input_transcript"))


@dataclass(frozen=True, slots=True)
class Stream:
    family: str
    kind: str
    done: frozenset[str]


STREAMS: dict[str, Stream] = {}
for _family, _kind, _deltas, _dones in (
    ("text", "output_text", ("response.output_text.delta", "response.text.delta"),
     ("response.output_text.done", "response.text.done")),
    ("transcript", "output_transcript",
     ("response.output_audio_transcript.delta", "response.audio_transcript.delta"),
     ("response.output_audio_transcript.done", "response.audio_transcript.done")),
    ("arguments", "function_arguments", ("response.function_call_arguments.delta",),
     ("response.function_call_arguments.done",)),
    ("mcp_arguments", "function_arguments", ("response.mcp_call_arguments.delta",),
     ("response.mcp_call_arguments.done",)),
    ("input_transcript", "input_transcript", ("conversation.item.input_audio_transcription.delta",),
     ("conversation.item.input_audio_transcription.completed",
      "conversation.item.input_audio_transcription.failed")),
):  # fmt: skip
    for _t in _deltas:
        STREAMS[_t] = Stream(_family, _kind, frozenset(_dones))

DONE_FAMILY: dict[str, str] = {d: s.family for s in STREAMS.values() for d in s.done}
ITEM_END = frozenset({"response.output_item.done", "conversation.item.done"})
RESPONSE_END = "response.done"


def _item_slots(item: Any, base: Path) -> Iterator[tuple[Path, str]]:
    if not isinstance(item, Mapping):
        return
    itype = item.get("type")
    if itype == "message" or (itype is None and "content" in item):
        assistant = item.get("role") == "assistant"
        content = item.get("content")
        if not isinstance(content, list):
            return
        for i, part in enumerate(content):
            if not isinstance(part, Mapping):
                continue
            if isinstance(part.get("text"), str):
                yield (*base, "content", i, "text"), "output_text" if assistant else "item_text"
            if isinstance(part.get("transcript"), str):
                yield (
                    (*base, "content", i, "transcript"),
                    "output_transcript" if assistant else "input_transcript",
                )
    elif itype in ("function_call", "mcp_call", "mcp_approval_request"):
        if isinstance(item.get("arguments"), str):
            yield (*base, "arguments"), "function_arguments"
        if itype == "mcp_call" and isinstance(item.get("output"), str):
            yield (*base, "output"), "function_output"
    elif itype == "function_call_output" and isinstance(item.get("output"), str):
        yield (*base, "output"), "function_output"


def get(payload: Any, path: Path) -> Any:
    node = payload
    for key in path:
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                return None
        elif not isinstance(node, Mapping):
            return None
        node = node[key] if isinstance(key, int) else node.get(key)
    return node


def _set(payload: Any, path: Path, value: Any) -> None:
    node = payload
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def slots(event_type: str, payload: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """Every (path, field kind) holding a string in a whole-value event."""
    entry = WHOLE.get(event_type)
    if entry is None:
        return
    for site in entry[1]:
        if site.kind == _ITEM:
            yield from _item_slots(get(payload, site.path), site.path)
        elif site.kind == _ITEMS:
            items = get(payload, site.path)
            if isinstance(items, list):
                for i, item in enumerate(items):
                    yield from _item_slots(item, (*site.path, i))
        elif isinstance(get(payload, site.path), str):
            yield site.path, site.kind


def path_str(path: Path) -> str:
    out = ""
    for p in path:
        out = f"{out}[{p}]" if isinstance(p, int) else (f"{out}.{p}" if out else p)
    return out


Rewriter = Callable[[str, str, Path], str | None]
"""(value, field kind, path) → the new value, or None to keep it."""


def rewrite(event: Event, kinds: frozenset[str], fn: Rewriter) -> Event | None:
    """Apply ``fn`` to every text slot of ``event`` whose kind is in ``kinds``.

    Deltas (``STREAMS`` types) are rewritten one fragment at a time. Returns the new event or
    None when nothing changed.
    """
    payload = event.payload()
    changes: list[tuple[Path, str]] = []
    stream = STREAMS.get(event.type)
    if stream is not None:
        delta = payload.get("delta")
        if stream.kind in kinds and isinstance(delta, str) and delta:
            new = fn(delta, stream.kind, ("delta",))
            if new is not None and new != delta:
                changes.append((("delta",), new))
    else:
        for path, kind in slots(event.type, payload):
            if kind in kinds:
                value = get(payload, path)
                new = fn(value, kind, path)
                if new is not None and new != value:
                    changes.append((path, new))
    if not changes:
        return None
    fresh = orjson.loads(event.text)  # a deep copy: the cached payload stays read-only
    if not isinstance(fresh, dict):
        return None
    for path, new in changes:
        _set(fresh, path, new)
    return event.with_payload(fresh)


def types_for(kinds: frozenset[str], direction: Direction, deltas: bool) -> frozenset[str]:
    """Event types in ``direction`` that can carry a field of ``kinds``."""
    out = set()
    for t, (d, sites) in WHOLE.items():
        item_kinds = kinds - {"instructions"}
        if d is direction and any(
            (s.kind in (_ITEM, _ITEMS) and item_kinds) or s.kind in kinds for s in sites
        ):
            out.add(t)
    if deltas and direction is U2C:
        out.update(t for t, s in STREAMS.items() if s.kind in kinds)
    return frozenset(out)
