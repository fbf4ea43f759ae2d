"""The audit tools' work: find recordings in a sink, fetch and export them, erase one.

Rules of this module:
- Reads the sink through ``ObjectStore`` only (the same layout for S3 and a local directory), with
  credentials from the standard AWS chain. Used by ``relay.recording.cli``.
- Export writes: ``audio.wav``, ``events.jsonl.gz`` and ``manifest.json`` exactly as stored (so the
  export can be verified), and derived from them ``caller.wav`` / ``assistant.wav`` (each channel as
  a mono WAV in the same encoding), ``events.jsonl``, ``transcript.txt`` and ``transcript.vtt``.
- Erase deletes every version of a session's objects only where retention allows (an Object Lock
  retain-until date in the future refuses: always under COMPLIANCE, under GOVERNANCE unless
  ``bypass_governance``), and leaves an audit record at ``<prefix>/erasures/...`` holding the
  manifest's hash and chain head, who asked, why and what was deleted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import gzip
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from relay.config import RecordingConfig
from relay.recording import layout
from relay.recording import manifest as mf
from relay.recording import transcript as tr
from relay.recording.s3 import S3Store
from relay.recording.store import LocalStore, ObjectStore, PutOptions, StoreError, Version
from relay.recording.wav import frame_bytes, header, parse_header, split


class EraseRefused(Exception):
    pass


async def open_store(cfg: RecordingConfig) -> tuple[ObjectStore, str]:
    """The configured sink and the key prefix recordings live under."""
    if cfg.sink == "s3":
        return await S3Store.open(cfg.s3), cfg.s3.prefix.strip("/")
    return LocalStore(cfg.local_dir), ""


async def find_session(
    store: ObjectStore, prefix: str, session_id: str, *, tenant: str | None = None, date: str | None = None
) -> layout.SessionLocation | None:
    """Locate a session by id, walking tenants and dates (narrowed by the hints when given)."""
    want = f"session={layout.component(session_id)}/"
    root = layout.join(prefix, "") if prefix else ""
    tenants = [layout.tenant_prefix(prefix, tenant)] if tenant else await store.list_dirs(root)
    for tdir in tenants:
        dates = [f"{tdir}date={date}/"] if date else await store.list_dirs(tdir)
        for ddir in reversed(dates):
            for sdir in await store.list_dirs(ddir):
                if sdir.endswith(want):
                    return layout.parse_folder(prefix, sdir)
    return None


async def sessions_between(
    store: ObjectStore, prefix: str, tenant: str, since: dt.datetime, until: dt.datetime
) -> list[layout.SessionLocation]:
    """A tenant's sessions that started in ``[since, until)`` (read from their manifests)."""
    out = []
    for date in layout.dates_between(since.date(), until.date()):
        for sdir in await store.list_dirs(layout.date_prefix(prefix, tenant, date)):
            loc = layout.parse_folder(prefix, sdir)
            if loc is None:
                continue
            try:
                m = mf.decode(await store.get(loc.key(layout.MANIFEST)))
            except (StoreError, ValueError):
                continue  # still uploading, or not a recording
            started = m.get("started_at")
            if isinstance(started, str):
                ts = dt.datetime.fromisoformat(started.replace("Z", "+00:00"))
                if since <= ts < until:
                    out.append(loc)
    return out


async def fetch(
    store: ObjectStore, loc: layout.SessionLocation, out: Path, progress: Callable[[int], None] | None = None
) -> None:
    """Download the session's three objects into ``out`` as they are stored."""
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    for name in (layout.MANIFEST, layout.EVENTS, layout.AUDIO):
        tmp = out / f".{name}.part"
        f = await asyncio.to_thread(open, tmp, "wb")
        try:
            async for chunk in store.read(loc.key(name)):
                await asyncio.to_thread(f.write, chunk)
                if progress is not None:
                    progress(len(chunk))
        finally:
            f.close()
        await asyncio.to_thread(tmp.replace, out / name)


def derive(out: Path) -> None:
    """Write the derived files of an export next to the fetched objects (blocking)."""
    content = gzip.decompress((out / layout.EVENTS).read_bytes())
    (out / "events.jsonl").write_bytes(content)
    lines = [orjson.loads(raw) for raw in content.splitlines() if raw]
    with open(out / layout.AUDIO, "rb") as f:
        info = parse_header(f.read(4096))
        fb = frame_bytes(info.fmt)
        with open(out / "caller.wav", "wb") as left, open(out / "assistant.wav", "wb") as right:
            mono = header(info.fmt, info.frames, channels=1)
            left.write(mono)
            right.write(mono)
            f.seek(info.data_offset)
            remaining = info.frames * fb
            while remaining > 0:
                chunk = f.read(min(remaining, (1 << 20) // fb * fb))
                if not chunk:
                    break
                remaining -= len(chunk)
                lch, rch = split(chunk, info.fmt)
                left.write(lch)
                right.write(rch)
    cues = tr.cues(lines, info.fmt.rate)
    (out / "transcript.txt").write_text(tr.text(cues), encoding="utf-8")
    (out / "transcript.vtt").write_text(tr.webvtt(cues), encoding="utf-8")


async def export_session(
    store: ObjectStore, loc: layout.SessionLocation, out: Path, progress: Callable[[int], None] | None = None
) -> None:
    await fetch(store, loc, out, progress)
    await asyncio.to_thread(derive, out)


async def erase(
    store: ObjectStore,
    loc: layout.SessionLocation,
    *,
    reason: str,
    requested_by: str = "",
    bypass_governance: bool = False,
    relay_version: str = "",
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Delete a session's recording where retention allows; returns the audit record written.

    Raises:
        EraseRefused: a retention period forbids it (nothing is deleted).
        StoreError: the sink failed (the audit record says ``pending``; run erase again).
    """
    now = now or dt.datetime.now(dt.UTC)
    manifest_blob: bytes | None
    try:
        manifest_blob = await store.get(loc.key(layout.MANIFEST))
        manifest: dict[str, Any] = mf.decode(manifest_blob)
    except (StoreError, ValueError):
        manifest_blob, manifest = None, {}
    locks: list[tuple[str, dt.datetime]] = []
    ret = manifest.get("retention")
    if isinstance(ret, dict) and ret.get("retain_until"):
        locks.append(
            (str(ret.get("mode")), dt.datetime.fromisoformat(str(ret["retain_until"]).replace("Z", "+00:00")))
        )
    for name in layout.OBJECT_NAMES:
        try:
            found = await store.retention(loc.key(name))
        except StoreError:
            found = None
        if found is not None:
            locks.append(found)
    for mode, until in locks:
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
        if until > now and (mode == "COMPLIANCE" or not bypass_governance):
            hint = "" if mode == "COMPLIANCE" else " (use --bypass-governance if you hold that permission)"
            raise EraseRefused(
                f"{mode} retention until {until.isoformat()} forbids erasing this recording{hint}"
            )
    versions: list[Version] = await store.versions(loc.folder + "/")
    record: dict[str, Any] = {
        "type": "realtime-relay/erasure",
        "status": "pending",
        "session_id": loc.session_id,
        "tenant": loc.tenant,
        "date": loc.date,
        "folder": loc.folder,
        "erased_at": now.isoformat().replace("+00:00", "Z"),
        "requested_by": requested_by or _whoami(),
        "reason": reason,
        "bypass_governance": bypass_governance,
        "manifest_sha256": hashlib.sha256(manifest_blob).hexdigest() if manifest_blob else None,
        "manifest_digest": manifest.get("digest"),
        "chain_head": (manifest.get("events") or {}).get("head"),
        "objects": {
            k: {"size": v.get("size"), "sha256": v.get("sha256")}
            for k, v in (manifest.get("objects") or {}).items()
            if isinstance(v, dict)
        },
        "deleted": [
            {"key": v.key, "version_id": v.version_id, "delete_marker": v.delete_marker} for v in versions
        ],
        "relay_version": relay_version,
    }
    opts = PutOptions(content_type="application/json")
    await store.put(loc.erasure_key, orjson.dumps(record, option=orjson.OPT_INDENT_2), opts)
    for v in versions:
        await store.delete(v, bypass_governance=bypass_governance)
    record["status"] = "erased"
    await store.put(loc.erasure_key, orjson.dumps(record, option=orjson.OPT_INDENT_2), opts)
    return record


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
