"""Recording into a real S3 server (SeaweedFS): multipart while the call runs, SSE, Object Lock,
an S3 outage mid-session, a relay killed mid-session, export → verify, erase."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from relay.config import RecordingConfig
from relay.metrics import RelayMetrics
from relay.recording import Recorder, RecordingPolicy, audit
from relay.recording.s3 import S3Store
from relay.recording.verify import verify_dir
from relay.recording.wav import parse_header, split
from tests.recording.conftest import s3_recording_config
from tests.recording.helpers import Call, session_info, settle
from tests.support.seaweed import KMS_KEY_ID, SeaweedFS

ROOT = Path(__file__).resolve().parents[2]


async def get(s3: Any, bucket: str, key: str) -> bytes:
    r = await s3.get_object(Bucket=bucket, Key=key)
    async with r["Body"] as body:
        return bytes(await body.read())


def sample(metrics: RelayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def failures(metrics: RelayMetrics) -> float:
    return sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "relay_recording_upload_failures"
        for s in m.samples
        if s.name.endswith("_total")
    )


async def converse(rec: Recorder, call: Call, seconds: int) -> None:
    """``seconds`` of conversation, fed faster than real time (the writer drains in between)."""
    for _ in range(seconds // 5):
        call.speak(4900)
        rid, _, _ = call.respond(1000)  # 1 s of audio arriving in 0.1 s
        call.done(rid)
        await rec._process_all()  # noqa: SLF001


async def test_long_session_uploads_parts_while_running_with_sse_kms_and_object_lock(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, s3_admin: Any
) -> None:
    metrics = RelayMetrics(CollectorRegistry())
    cfg = s3_recording_config(tmp_path, seaweedfs, bucket, sse="aws:kms", kms_key_id=KMS_KEY_ID)
    rec = await Recorder.create(cfg, metrics, relay_version="s3-test")
    info = session_info()
    policy = RecordingPolicy(lock_mode="GOVERNANCE", retention_days=2, storage_class="STANDARD")
    sink = rec.open(info, policy)
    call = Call(sink)
    call.start()
    await converse(rec, call, 125)  # > 2 parts of 5 MiB (54.6 s each at 24 kHz stereo PCM16)
    await rec._sync()  # noqa: SLF001
    loc = f"calls/tenant=acme/date={dt.datetime.fromtimestamp(info.started_at, dt.UTC):%Y-%m-%d}/session={info.session_id}"
    deadline = time.monotonic() + 20
    parts: list[Any] = []
    while time.monotonic() < deadline and not parts:  # the first parts go up while the call runs
        uploads = (await s3_admin.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])
        mine = [u for u in uploads if u["Key"] == f"{loc}/audio.wav"]
        if mine:
            parts = (
                await s3_admin.list_parts(Bucket=bucket, Key=mine[0]["Key"], UploadId=mine[0]["UploadId"])
            ).get("Parts", [])
        await asyncio_sleep(0.1)
    assert parts and parts[0]["PartNumber"] == 2
    spool_dir = next(p for p in (tmp_path / "spool").iterdir() if p.is_dir())
    assert not (spool_dir / "left.000001.raw").exists()  # segment 1 left the spool once stored
    await converse(rec, call, 10)
    sink.close(call.summary())
    await settle(rec, 60)
    await rec.aclose()

    for name in ("audio.wav", "events.jsonl.gz", "manifest.json"):
        head = await s3_admin.head_object(Bucket=bucket, Key=f"{loc}/{name}")
        assert head["ServerSideEncryption"] == "aws:kms" and head.get("SSEKMSKeyId")
        ret = (await s3_admin.get_object_retention(Bucket=bucket, Key=f"{loc}/{name}"))["Retention"]
        assert ret["Mode"] == "GOVERNANCE"
        until = ret["RetainUntilDate"].astimezone(dt.UTC)
        assert dt.timedelta(days=1.9) < until - dt.datetime.now(dt.UTC) < dt.timedelta(days=2.1)
    wav = await get(s3_admin, bucket, f"{loc}/audio.wav")
    h = parse_header(wav)
    left, _ = split(wav[h.data_offset :], h.fmt)
    assert left[: len(call.sent)] == bytes(call.sent)
    assert abs(h.frames / 24000 - call.t_us / 1e6) < 0.05
    manifest = __import__("orjson").loads(await get(s3_admin, bucket, f"{loc}/manifest.json"))
    assert manifest["complete"] is True
    assert manifest["retention"]["mode"] == "GOVERNANCE"
    assert manifest["storage"]["sink"] == "s3" and manifest["storage"]["sse"] == "aws:kms"
    assert manifest["objects"]["audio.wav"]["size"] == len(wav)
    assert sample(metrics, "relay_recordings_total", status="complete") == 1
    assert sample(metrics, "relay_recording_upload_failures_total", op="upload_part") == 0

    # export → verify round trip, then erase under GOVERNANCE retention.
    store = await S3Store.open(cfg.s3)
    try:
        found = await audit.find_session(store, "calls", info.session_id)
        assert found is not None and found.folder == loc
        out = tmp_path / "export"
        await audit.export_session(store, found, out)
        names = sorted(p.name for p in out.iterdir())
        assert names == sorted(
            [
                "audio.wav",
                "caller.wav",
                "assistant.wav",
                "transcript.txt",
                "transcript.vtt",
                "events.jsonl",
                "events.jsonl.gz",
                "manifest.json",
            ]
        )
        report = verify_dir(out)
        assert report.ok, report.problems
        assert (out / "caller.wav").stat().st_size == (len(wav) - 44) // 2 + 44
        assert "Assistant: Hello there." in (out / "transcript.txt").read_text()
        with pytest.raises(audit.EraseRefused, match="GOVERNANCE retention"):
            await audit.erase(store, found, reason="test")
        record = await audit.erase(
            store, found, reason="privacy request", requested_by="dpo", bypass_governance=True
        )
        assert record["status"] == "erased" and len(record["deleted"]) >= 3
        assert await store.list_keys(loc + "/") == []
        assert not [v for v in await store.versions(loc + "/") if not v.delete_marker]
        trail = __import__("orjson").loads(await store.get(found.erasure_key))
        assert trail["chain_head"] == manifest["events"]["head"] and trail["requested_by"] == "dpo"
    finally:
        await store.aclose()


async def asyncio_sleep(s: float) -> None:
    await asyncio.sleep(s)


async def test_sse_s3_and_compliance_lock_refuses_erase(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, s3_admin: Any
) -> None:
    cfg = s3_recording_config(tmp_path, seaweedfs, bucket, sse="AES256")
    rec = await Recorder.create(cfg, RelayMetrics(CollectorRegistry()), relay_version="t")
    info = session_info()
    sink = rec.open(info, RecordingPolicy(lock_mode="COMPLIANCE", retention_days=1))
    call = Call(sink)
    call.start()
    call.speak(1000)
    sink.close(call.summary())
    await settle(rec)
    await rec.aclose()
    store = await S3Store.open(cfg.s3)
    try:
        loc = await audit.find_session(store, "calls", info.session_id, tenant="acme")
        assert loc is not None
        head = await s3_admin.head_object(Bucket=bucket, Key=loc.key("audio.wav"))
        assert head["ServerSideEncryption"] == "AES256"
        ret = await s3_admin.get_object_retention(Bucket=bucket, Key=loc.key("manifest.json"))
        assert ret["Retention"]["Mode"] == "COMPLIANCE"
        with pytest.raises(audit.EraseRefused, match="COMPLIANCE"):
            await audit.erase(store, loc, reason="x", bypass_governance=True)
        assert len(await store.list_keys(loc.folder + "/")) == 3
    finally:
        await store.aclose()


async def test_s3_down_mid_session_then_back_completes_the_recording(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, s3_admin: Any
) -> None:
    metrics = RelayMetrics(CollectorRegistry())
    rec = await Recorder.create(s3_recording_config(tmp_path, seaweedfs, bucket), metrics, relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink)
    call.start()
    await converse(rec, call, 20)
    seaweedfs.kill()  # S3 is gone mid-session
    try:
        await converse(rec, call, 45)  # the call goes on: spooling continues
        sink.close(call.summary())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not failures(metrics):
            await asyncio_sleep(0.1)
        assert failures(metrics) >= 1
        await asyncio.sleep(0.5)
        await rec._measure()  # noqa: SLF001 - what the fsync loop does every interval
        assert sample(metrics, "relay_recording_upload_lag_seconds") > 0.3
        assert sample(metrics, "relay_recording_spool_bytes") > 60 * 96_000  # the call waits in the spool
        assert rec._uploads  # noqa: SLF001 - still waiting for S3
        rec.admit()  # a short outage does not fill the spool
    finally:
        seaweedfs.start()
    await settle(rec, 60)
    await rec.aclose()
    store = await S3Store.open(s3_recording_config(tmp_path, seaweedfs, bucket).s3)
    try:
        loc = await audit.find_session(store, "calls", info.session_id)
        assert loc is not None
        out = tmp_path / "out"
        await audit.fetch(store, loc, out)
    finally:
        await store.aclose()
    report = verify_dir(out)
    assert report.ok, report.problems
    h = parse_header((out / "audio.wav").read_bytes())
    left, _ = split((out / "audio.wav").read_bytes()[h.data_offset :], h.fmt)
    assert left[: len(call.sent)] == bytes(call.sent)  # nothing missing
    manifest = __import__("orjson").loads((out / "manifest.json").read_bytes())
    assert manifest["complete"] is True


async def test_relay_killed_mid_session_restart_uploads_the_spool(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    spool = tmp_path / "spool"
    session_id = f"sess_kill_{os.urandom(4).hex()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.recording.crash_worker",
        str(spool),
        bucket,
        seaweedfs.endpoint,
        session_id,
        "130",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("READY"), line
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    (left,) = [p for p in spool.iterdir() if p.is_dir()]  # the session is still in the spool
    state = __import__("orjson").loads((left / "state.json").read_bytes())
    assert state["closed"] is None
    assert state["audio"]["upload_id"] and state["audio"]["parts"]  # part 2 went up before the kill
    metrics = RelayMetrics(CollectorRegistry())
    rec = await Recorder.create(
        s3_recording_config(tmp_path, seaweedfs, bucket), metrics, relay_version="restarted"
    )
    await settle(rec, 60)
    await rec.aclose()
    assert [p.name for p in spool.iterdir() if p.is_dir()] == []
    store = await S3Store.open(s3_recording_config(tmp_path, seaweedfs, bucket).s3)
    try:
        loc = await audit.find_session(store, "calls", session_id)
        assert loc is not None
        out = tmp_path / "out"
        await audit.fetch(store, loc, out)
    finally:
        await store.aclose()
    manifest = __import__("orjson").loads((out / "manifest.json").read_bytes())
    assert manifest["complete"] is False and manifest["incomplete_reason"] == "relay_restart"
    report = verify_dir(out)
    assert report.ok, report.problems
    sent = (tmp_path / "sent.bin").read_bytes()
    h = parse_header((out / "audio.wav").read_bytes())
    left, _ = split((out / "audio.wav").read_bytes()[h.data_offset :], h.fmt)
    assert left[: len(sent)] == sent  # every spooled byte made it
    assert sample(metrics, "relay_recordings_total", status="incomplete") == 1


def test_s3_config_has_no_credentials_fields() -> None:
    fields = set(RecordingConfig().s3.__dataclass_fields__)  # type: ignore[attr-defined]
    assert not {f for f in fields if "secret" in f or "access_key" in f or "token" in f}
