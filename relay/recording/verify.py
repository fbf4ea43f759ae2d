"""``relay verify``: recompute every hash of a recording and report what does not match.

Rules of this module:
- Works on a directory holding ``manifest.json`` and the objects (a local recording, or one the
  CLI fetched or exported). Blocking file I/O: run it in a worker thread from async code.
- Checks, in order: the manifest's own digest; each object's size and SHA-256 against the
  manifest; every event line's hash and the chain from its genesis to the head in the manifest
  (sequence numbers too); ``events.jsonl`` against ``events.jsonl.gz`` when both are there; the
  WAV header against the manifest; every caller audio reference against the left channel, and
  every assistant reference that was not cut against the right channel; the manifest's facts
  against the chain-protected ``recording.open`` / ``recording.close`` lines.
- A problem names where it is (object, line number, frame) so an auditor can look.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from relay.recording import eventlog as el
from relay.recording import layout
from relay.recording import manifest as mf
from relay.recording.wav import frame_bytes, parse_header, split

EVENTS_PLAIN = "events.jsonl"


@dataclass(slots=True)
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lines: int = 0
    refs_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dir(path: Path) -> Report:
    r = Report()
    mpath = path / layout.MANIFEST
    if not mpath.is_file():
        r.problems.append("manifest.json is missing")
        return r
    try:
        m = mf.decode(mpath.read_bytes())
    except ValueError as exc:
        r.problems.append(f"manifest.json is not valid JSON: {exc}")
        return r
    if m.get("digest") != mf.digest(m):
        r.problems.append("manifest.json: its digest does not match its content (the manifest was changed)")
    objects = m.get("objects") or {}
    for name in (layout.AUDIO, layout.EVENTS):
        meta = objects.get(name)
        p = path / name
        if not isinstance(meta, dict):
            r.problems.append(f"{name}: not listed in the manifest")
            continue
        if not p.is_file():
            if name == layout.EVENTS and (path / EVENTS_PLAIN).is_file():
                r.notes.append(f"{name} absent; the chain is checked from {EVENTS_PLAIN}")
            else:
                r.problems.append(f"{name}: missing")
            continue
        size, digest = mf.file_digest(p)
        if size != meta.get("size"):
            r.problems.append(f"{name}: {size} bytes, the manifest says {meta.get('size')}")
        if digest != meta.get("sha256"):
            r.problems.append(f"{name}: SHA-256 differs from the manifest (the object was changed)")
    lines = _load_lines(path, r)
    if lines is None:
        return r
    parsed = _check_chain(lines, m, r)
    _check_facts(parsed, m, r)
    if (path / layout.AUDIO).is_file():
        _check_audio(path / layout.AUDIO, parsed, m, r)
    return r


def _load_lines(path: Path, r: Report) -> list[bytes] | None:
    gz, plain = path / layout.EVENTS, path / EVENTS_PLAIN
    content: bytes | None = None
    if gz.is_file():
        try:
            content = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:
            r.problems.append(f"{layout.EVENTS}: cannot be decompressed ({exc})")
    if plain.is_file():
        text = plain.read_bytes()
        if content is not None and text != content:
            r.problems.append(f"{EVENTS_PLAIN} differs from the content of {layout.EVENTS}")
        if content is None:
            content = text
    if content is None:
        r.problems.append("no event log to check")
        return None
    if content and not content.endswith(b"\n"):
        r.problems.append("event log: the last line is not terminated (truncated)")
    if not content:
        return []
    return content.split(b"\n")[:-1] if content.endswith(b"\n") else content.split(b"\n")


def _check_chain(lines: list[bytes], m: dict[str, Any], r: Report) -> list[dict[str, Any]]:
    session_id = str(m.get("session_id", ""))
    events_meta = m.get("events") or {}
    head = el.genesis(session_id)
    if events_meta.get("genesis") and events_meta["genesis"] != head.hex():
        r.problems.append("manifest events.genesis does not match the session id")
    parsed: list[dict[str, Any]] = []
    broken = False
    for i, raw in enumerate(lines, 1):
        try:
            canonical, claimed = el.split_line(raw)
            obj = orjson.loads(raw)
        except (ValueError, orjson.JSONDecodeError) as exc:
            r.problems.append(f"event line {i}: malformed ({exc})")
            broken = True
            continue
        if not isinstance(obj, dict):
            r.problems.append(f"event line {i}: not a JSON object")
            continue
        if obj.get("seq") != i - 1:
            r.problems.append(f"event line {i}: sequence number {obj.get('seq')}, expected {i - 1}")
        computed = el.chain(head, canonical)
        if computed.hex() != claimed:
            if not broken:
                r.problems.append(
                    f"event line {i} (seq {obj.get('seq')}): hash mismatch, the line was changed"
                )
            broken = True
        head = bytes.fromhex(claimed) if not broken else computed
        parsed.append(obj)
    r.lines = len(parsed)
    if events_meta.get("count") is not None and events_meta["count"] != len(lines):
        r.problems.append(f"event log has {len(lines)} lines, the manifest says {events_meta['count']}")
    if not broken and events_meta.get("head") != head.hex():
        r.problems.append("event chain head differs from the manifest (lines removed or added at the end)")
    return parsed


def _check_facts(parsed: list[dict[str, Any]], m: dict[str, Any], r: Report) -> None:
    opened = next((p for p in parsed if p.get("type") == "recording.open" and p.get("dir") == "relay"), None)
    if (
        opened is None
        and not parsed
        and m.get("complete") is False
        and (m.get("events") or {}).get("count") == 0
    ):
        r.notes.append(f"the event log is empty: the recording is incomplete ({m.get('incomplete_reason')})")
    elif opened is None:
        r.problems.append("event log has no recording.open line")
    else:
        ev = opened.get("event") or {}
        for key in ("session_id", "tenant", "model", "dialect", "policy_version"):
            if ev.get(key, "") != m.get(key, ""):
                r.problems.append(
                    f"manifest {key} {m.get(key)!r} differs from the event log's {ev.get(key)!r}"
                )
        if mf.iso(ev.get("started_at")) != m.get("started_at"):
            r.problems.append("manifest started_at differs from the event log")
        client = m.get("client") or {}
        if ev.get("client_addr", "") != client.get("address") or ev.get("user_agent", "") != client.get(
            "user_agent"
        ):
            r.problems.append("manifest client differs from the event log")
        if ev.get("relay_version") != m.get("relay_version"):
            r.problems.append("manifest relay_version differs from the event log")
    closed = next(
        (p for p in reversed(parsed) if p.get("type") == "recording.close" and p.get("dir") == "relay"), None
    )
    if closed is not None:
        ev = closed.get("event") or {}
        close = m.get("close") or {}
        pairs = [
            (ev.get("client_close_code"), (close.get("client") or {}).get("code")),
            (ev.get("upstream_close_code"), (close.get("upstream") or {}).get("code")),
            (ev.get("outcome"), close.get("outcome")),
            ((ev.get("audio") or {}).get("frames"), (m.get("audio") or {}).get("frames")),
        ]
        if any(a != b for a, b in pairs):
            r.problems.append("manifest close facts differ from the event log's recording.close line")
    elif m.get("complete"):
        r.problems.append("manifest says complete but the event log has no recording.close line")


def _check_audio(wav: Path, parsed: list[dict[str, Any]], m: dict[str, Any], r: Report) -> None:
    with open(wav, "rb") as f:
        try:
            info = parse_header(f.read(4096))
        except ValueError as exc:
            r.problems.append(f"audio.wav: {exc}")
            return
        audio = m.get("audio") or {}
        if info.channels != 2:
            r.problems.append(f"audio.wav has {info.channels} channels, expected 2")
            return
        if audio.get("frames") is not None and info.frames != audio["frames"]:
            r.problems.append(f"audio.wav holds {info.frames} frames, the manifest says {audio['frames']}")
        if (info.fmt.encoding, info.fmt.rate) != (audio.get("encoding"), audio.get("sample_rate")):
            r.problems.append("audio.wav format differs from the manifest")
        fb = frame_bytes(info.fmt)
        cuts: dict[str, int] = {}
        for p in parsed:
            if p.get("dir") == "relay" and p.get("type") == "recording.cut":
                ev = p.get("event") or {}
                item, frame = ev.get("item_id"), ev.get("frame")
                if isinstance(item, str) and isinstance(frame, int):
                    cuts[item] = min(frame, cuts.get(item, frame))
        for i, p in enumerate(parsed, 1):
            ev = p.get("event")
            if not isinstance(ev, dict):
                continue
            ref = ev.get("audio") if p.get("type") == "input_audio_buffer.append" else ev.get("delta")
            if not isinstance(ref, dict) or "offset" not in ref or ref.get("converted"):
                continue
            off, dur = int(ref["offset"]), int(ref["duration"])
            if ref.get("bytes") != dur * info.fmt.sample_bytes:
                continue  # a chunk with a torn trailing sample: only whole samples were laid
            track = 0 if ref.get("track") == "caller" else 1
            if off + dur > info.frames:
                continue  # past the end of the session: never heard
            if track == 1:
                cut = cuts.get(str(ev.get("item_id", "")))
                if cut is not None and off + dur > cut:
                    continue
            f.seek(info.data_offset + off * fb)
            chunk = f.read(dur * fb)
            channel = split(chunk, info.fmt)[track]
            r.refs_checked += 1
            if hashlib.sha256(channel).hexdigest() != ref.get("sha256"):
                name = "caller" if track == 0 else "assistant"
                r.problems.append(
                    f"audio.wav {name} audio at frame {off} (event line {i}) differs from its reference in the log"
                )
                if len(r.problems) > 50:
                    r.problems.append("too many audio differences; stopped")
                    return
