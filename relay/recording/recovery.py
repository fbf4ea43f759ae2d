"""Finishing what a killed relay left in the spool.

Rules of this module:
- Runs once per leftover session directory when a ``Recorder`` starts (in a worker thread; all
  calls here block). A directory without a readable ``state.json`` is left in place and logged,
  never deleted: it may be the only copy of a recording.
- A session that was already closed is uploaded as it was sealed (complete if it was complete).
- A session cut off mid-call is sealed now: the torn tail of the event log (at most the last gzip
  member) is dropped, the chain is resumed from the last whole line, one ``recording.incomplete``
  line (``reason: relay_restart``) is appended, the audio ends at the furthest frame written, and
  the manifest will say ``complete: false, incomplete_reason: relay_restart``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from relay.recording import eventlog as el
from relay.recording.audioformat import AudioFormat
from relay.recording.manifest import iso
from relay.recording.spool import EVENTS, SessionSpool, gzip_member, valid_gzip_prefix

log = logging.getLogger("relay.recording")

RELAY_RESTART = "relay_restart"


def scan_lines(lines: list[bytes]) -> dict[str, Any]:
    """What the event log tells about a session: audio counters, format, last time, chain state."""
    out: dict[str, Any] = {
        "caller_frames": 0,
        "assistant_frames": 0,
        "cut_frames": 0,
        "late_cut_frames": 0,
        "last_t_us": 0,
        "seq": 0,
        "head": None,
        "format": None,
    }
    for raw in lines:
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            break
        out["seq"] = int(line.get("seq", out["seq"])) + 1
        out["head"] = line.get("hash")
        out["last_t_us"] = max(out["last_t_us"], int(line.get("t_us", 0)))
        ev = line.get("event")
        kind = line.get("type")
        if line.get("dir") == el.RELAY_DIR and isinstance(ev, dict):
            if kind == "recording.format":
                out["format"] = {"encoding": ev.get("encoding"), "rate": ev.get("rate")}
            elif kind == "recording.cut":
                out["cut_frames"] += int(ev.get("frames", 0))
                out["late_cut_frames"] += int(ev.get("late_frames", 0))
            continue
        if isinstance(ev, dict):
            ref = ev.get("audio") if kind == "input_audio_buffer.append" else ev.get("delta")
            if isinstance(ref, dict) and "duration" in ref:
                key = "caller_frames" if ref.get("track") == "caller" else "assistant_frames"
                out[key] += int(ref["duration"])
    return out


def recover(path: Path, part_size: int) -> tuple[SessionSpool, dict[str, Any]] | None:
    """Prepare a leftover session for upload; None if it cannot be read (left in place)."""
    spool = SessionSpool(path, part_size)
    try:
        state = spool.load_state()
    except (OSError, ValueError) as exc:
        log.error("spool directory %s has no readable state.json (%s); left in place", path, exc)
        return None
    events = path / EVENTS
    if state.get("closed") is None:
        try:
            blob = events.read_bytes()
        except FileNotFoundError:
            blob = b""
        valid, content = valid_gzip_prefix(blob)
        if valid < len(blob):
            os.truncate(events, valid)
        info = scan_lines(content.splitlines())
        fmt = state.get("format") or (
            info["format"] if info["format"] and info["format"]["encoding"] else None
        )
        if fmt:
            spool.set_format(AudioFormat(fmt["encoding"], int(fmt["rate"])))
            state["format"] = fmt
            state["frames_per_part"] = spool.frames_per_segment
        n = spool.frames_per_segment
        total = max(
            spool.written_frames(), state["audio"]["next_segment"] * n if state["audio"]["parts"] else 0
        )
        head = bytes.fromhex(info["head"]) if info["head"] else None
        session_id = state["info"]["session_id"]
        elog = el.EventLog(session_id, seq=info["seq"], head=head)
        line = elog.relay_line(
            info["last_t_us"],
            "recording.incomplete",
            {"reason": RELAY_RESTART, "recovered_at": iso(time.time())},
        )
        with open(events, "ab") as f:
            f.write(gzip_member(line))
            f.flush()
            os.fsync(f.fileno())
        rate = int(fmt["rate"]) if fmt else 24000
        state["closed"] = {
            "summary": None,
            "total_frames": total,
            "audio": {
                "encoding": fmt["encoding"] if fmt else "pcm16",
                "sample_rate": rate,
                "frames": total,
                "caller_frames": info["caller_frames"],
                "assistant_frames": info["assistant_frames"],
                "heard_frames": max(0, info["assistant_frames"] - info["cut_frames"]),
                "late_cut_frames": info["late_cut_frames"],
            },
            "events": {
                "count": elog.seq,
                "genesis": el.genesis(session_id).hex(),
                "head": elog.head.hex(),
            },
            "incomplete_reason": RELAY_RESTART,
        }
        if state.get("format") is None:
            state["format"] = {"encoding": "pcm16", "rate": 24000}
            spool.set_format(AudioFormat("pcm16", 24000))
            state["frames_per_part"] = spool.frames_per_segment
        spool.save_state(state)
    elif state.get("format"):
        f = state["format"]
        spool.set_format(AudioFormat(f["encoding"], int(f["rate"])))
    try:
        spool.events_size = events.stat().st_size
    except FileNotFoundError:
        spool.events_size = 0
    return spool, state
