"""``manifest.json``: what an auditor reads first, written last (sans-I/O).

Rules of this module:
- The manifest names every fact of the session (tenant, model, dialect, client, times, close codes,
  policy version, usage, relay version), each object's key, size and SHA-256, the event chain's
  head, and whether the recording is complete (``complete`` / ``incomplete_reason``).
- ``digest`` is the SHA-256 of the manifest itself serialised canonically without ``digest``
  (sorted keys, no spaces, UTF-8), so a changed byte in the manifest is detected too. It does not
  stop someone who can rewrite every object consistently: Object Lock does (docs/recording.md).
- Pure, no I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import orjson

FORMAT = "realtime-relay/recording"
VERSION = 1


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with microseconds, or None."""
    if ts is None or ts <= 0:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def encode(manifest: dict[str, Any]) -> bytes:
    """The manifest as written: ``digest`` added, pretty-printed, sorted keys, trailing newline."""
    m = dict(manifest)
    m["digest"] = digest(m)
    return orjson.dumps(m, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def decode(blob: bytes) -> dict[str, Any]:
    """Parse a manifest. Raises ValueError if it is not a JSON object."""
    m = orjson.loads(blob)
    if not isinstance(m, dict):
        raise ValueError("manifest is not a JSON object")
    return m


def build(
    *,
    info: dict[str, Any],
    summary: dict[str, Any] | None,
    audio: dict[str, Any],
    events: dict[str, Any],
    objects: dict[str, dict[str, Any]],
    storage: dict[str, Any],
    retention: dict[str, Any] | None,
    relay_version: str,
    complete: bool,
    incomplete_reason: str | None,
    recorded_at: float,
) -> dict[str, Any]:
    """Assemble the manifest from the recording's parts (see docs/recording.md for each field).

    ``info`` is the session's handshake facts (SessionInfo as a dict), ``summary`` the close facts
    (SessionSummary as a dict, None when the relay died before the session ended).
    """
    s = summary or {}
    usage = s.get("usage") or {}
    rate = audio.get("sample_rate") or 1
    started = info.get("started_at") or 0.0
    ended = s.get("ended_at") or (started + audio.get("frames", 0) / rate if started else None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "session_id": info.get("session_id", ""),
        "tenant": info.get("tenant", ""),
        "model": info.get("model", ""),
        "dialect": info.get("dialect", ""),
        "intent": info.get("intent", ""),
        "call_id": info.get("call_id", ""),
        "key_id": info.get("key_id", ""),
        "client": {"address": info.get("client_addr", ""), "user_agent": info.get("user_agent", "")},
        "started_at": iso(started),
        "ended_at": iso(ended),
        "duration_seconds": s.get("duration_s"),
        "close": {
            "client": {"code": s.get("client_close_code"), "reason": s.get("client_close_reason", "")},
            "upstream": {"code": s.get("upstream_close_code"), "reason": s.get("upstream_close_reason", "")},
            "outcome": s.get("outcome", ""),
        },
        "policy_version": info.get("policy_version", ""),
        "audio_seconds": {
            "in": round(audio.get("caller_frames", 0) / rate, 3),
            "out": round(audio.get("assistant_frames", 0) / rate, 3),
            "heard": round(audio.get("heard_frames", 0) / rate, 3),
        },
        "tokens": usage.get("tokens"),
        "usd": usage.get("usd"),
        "usage": usage,
        "event_counts": {
            "client_to_upstream": s.get("events_client_to_upstream"),
            "upstream_to_client": s.get("events_upstream_to_client"),
        },
        "audio": audio,
        "events": events,
        "objects": objects,
        "storage": storage,
        "retention": retention,
        "relay_version": relay_version,
        "complete": complete,
        "incomplete_reason": incomplete_reason,
        "recorded_at": iso(recorded_at),
    }


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file, read in 1 MiB chunks (the manifest's object entries).

    Blocking; the chunks go through one buffer (no fresh memory per chunk), and the hashing
    releases the GIL, so callers run it in a worker thread.
    """
    h = hashlib.sha256()
    size = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            size += n
            h.update(view[:n])
    return size, h.hexdigest()
