"""A whole recording through the default local sink: objects, audio, chain, overflow, admission."""

from __future__ import annotations

import asyncio
import errno
import gzip
import os
import shutil
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from relay.config import RecordingConfig
from relay.errors import RecorderError
from relay.metrics import RelayMetrics
from relay.recording import NullRecording, Recorder, RecordingPolicy
from relay.recording.spool import SessionSpool
from relay.recording.verify import verify_dir
from relay.recording.wav import parse_header, split
from tests.recording.helpers import Call, b64, client, noise, read_local, session_info, settle


def local_config(tmp: Path, **kw: object) -> RecordingConfig:
    return RecordingConfig(local_dir=str(tmp / "rec"), spool_dir=str(tmp / "spool"), fsync_interval=0.2, **kw)  # type: ignore[arg-type]


def sample(metrics: RelayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_interrupted_call_yields_three_objects_with_exact_channels(tmp_path: Path) -> None:
    metrics = RelayMetrics(CollectorRegistry())
    rec = await Recorder.create(local_config(tmp_path), metrics, relay_version="9.9")
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink)
    call.start()
    call.speak(1500)
    rid1, item1, audio1 = call.respond(3000)  # 3 s of model audio, 10x faster than real time
    t_play = call.t_us - 300 * 1000  # the first delta reached the client 0.3 s ago
    call.speak(1000)  # the caller talks over it...
    call.up(
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "e",
            "audio_start_ms": 1600,
            "item_id": "u2",
        }
    )
    call.done(rid1, "cancelled")
    played_ms = (call.t_us - t_play) // 1000 - 200  # ...and the client stopped 200 ms before the cancel
    call.truncate(item1, played_ms)
    call.speak(500)
    rid2, item2, audio2 = call.respond(1000)
    call.done(rid2)
    call.wait(1500)
    sink.record_relay_event(
        "policy.action", {"policy": "pii", "action": "redact", "field": "transcript"}, call.t_us
    )
    sink.close(call.summary())
    await settle(rec)
    await rec.aclose()

    manifest, lines, wav, folder = read_local(tmp_path / "rec", info.session_id)
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "events.jsonl.gz", "manifest.json"]
    assert manifest["complete"] is True and manifest["incomplete_reason"] is None
    assert (
        manifest["tenant"] == "acme"
        and manifest["relay_version"] == "9.9"
        and manifest["policy_version"] == "v1-test"
    )
    h = parse_header(wav)
    assert (h.fmt.encoding, h.fmt.rate, h.channels) == ("pcm16", 24000, 2)
    assert abs(h.frames / 24000 - call.t_us / 1e6) < 0.05  # WAV length = session length
    left, right = split(wav[h.data_offset :], h.fmt)
    assert left[: len(call.sent)] == bytes(call.sent)  # byte-identical caller channel
    assert left[len(call.sent) :] == bytes(len(left) - len(call.sent))
    # Right channel: exactly what was heard of response 1 (cut at the truncation), then response 2.
    start1 = right.find(audio1[:4800])
    heard1 = played_ms * 48
    assert right[start1 : start1 + heard1] == audio1[:heard1]
    start2 = right.find(audio2[:4800])
    assert right[start2 : start2 + len(audio2)] == audio2
    silent = bytearray(right)
    silent[start1 : start1 + heard1] = bytes(heard1)
    silent[start2 : start2 + len(audio2)] = bytes(len(audio2))
    assert bytes(silent) == bytes(len(silent))  # silence everywhere else
    assert manifest["audio_seconds"]["heard"] == pytest.approx((heard1 + len(audio2)) / 48000, abs=0.001)
    # Event log: every event, refs instead of audio, relay events, chain head in the manifest.
    kinds = [ln["type"] for ln in lines]
    assert kinds[0] == "recording.open" and kinds[-1] == "recording.close"
    assert "policy.action" in kinds and "recording.cut" in kinds
    appends = [ln for ln in lines if ln["type"] == "input_audio_buffer.append"]
    assert len(appends) == len(call.sent) // 960
    assert all(isinstance(ln["event"]["audio"], dict) for ln in appends)
    audio_lines = [
        ln for ln in lines if ln["type"] in ("input_audio_buffer.append", "response.output_audio.delta")
    ]
    assert all(len(orjson.dumps(ln)) < 500 for ln in audio_lines)  # no audio payloads in the log
    assert [ln["seq"] for ln in lines] == list(range(len(lines)))
    assert manifest["events"]["head"] == lines[-1]["hash"] and manifest["events"]["count"] == len(lines)
    report = verify_dir(folder)
    assert report.ok, report.problems
    assert report.refs_checked >= len(appends)
    assert sample(metrics, "relay_recordings_total", status="complete") == 1
    assert sample(metrics, "relay_recording_uploaded_bytes_total") > len(wav)
    assert not any((tmp_path / "spool").iterdir()) or all(
        p.name == ".lock" for p in (tmp_path / "spool").iterdir()
    )


@pytest.mark.parametrize("fmt,tag", [("pcmu", 7), ("pcma", 6)])
async def test_beta_g711_session_is_recorded_in_its_own_encoding(tmp_path: Path, fmt: str, tag: int) -> None:
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink, beta=True, fmt=fmt)
    call.start()
    call.speak(2000)
    rid, _, audio = call.respond(500)
    call.done(rid)
    call.wait(1000)
    sink.close(call.summary())
    await settle(rec)
    await rec.aclose()
    manifest, lines, wav, folder = read_local(tmp_path / "rec", info.session_id)
    h = parse_header(wav)
    assert int.from_bytes(wav[20:22], "little") == tag and h.fmt.rate == 8000
    left, right = split(wav[h.data_offset :], h.fmt)
    assert left[: len(call.sent)] == bytes(call.sent)
    assert audio in right
    assert any(
        ln["type"] == "response.audio.delta" and isinstance(ln["event"]["delta"], dict) for ln in lines
    )
    assert verify_dir(folder).ok


async def test_mixed_formats_are_converted_and_marked(tmp_path: Path) -> None:
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink, fmt="pcmu")
    session = {
        "type": "realtime",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}},
        },
    }
    call.up({"type": "session.created", "event_id": "e", "session": session})
    call.speak(1000)
    call.bytes_per_ms = 48  # the model answers in PCM16 24 kHz
    rid, _, _ = call.respond(300)
    call.done(rid)
    sink.close(call.summary())
    await settle(rec)
    await rec.aclose()
    manifest, lines, wav, folder = read_local(tmp_path / "rec", info.session_id)
    assert manifest["audio"]["encoding"] == "pcmu"
    deltas = [ln["event"]["delta"] for ln in lines if ln["type"] == "response.output_audio.delta"]
    assert deltas and all(d["converted"] and d["format"] == "audio/pcm" for d in deltas)
    assert verify_dir(folder).ok


async def test_overflow_terminate_tells_the_core_and_marks_the_recording(tmp_path: Path) -> None:
    metrics = RelayMetrics(CollectorRegistry())
    rec = await Recorder.create(local_config(tmp_path, queue_size=50), metrics, relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    fired: list[bool] = []
    sink.on_overflow = lambda: fired.append(True)
    call = Call(sink)
    results = []
    for _ in range(60):  # faster than the writer drains (it ticks every 100 ms)
        call.t_us += 20_000
        event = client({"type": "input_audio_buffer.append", "audio": b64(noise(960))})
        results.append(sink.record_event(event, call.t_us))
    assert results[:50] == [True] * 50 and results[50:] == [False] * 10
    assert sink.overflowed and fired == [True]
    assert sample(metrics, "relay_recording_dropped_total", tenant="acme", policy="terminate") == 1
    sink.close(call.summary(outcome="recording_overflow", client_close_code=1011))
    await settle(rec)
    await rec.aclose()
    manifest, lines, _, folder = read_local(tmp_path / "rec", info.session_id)
    assert manifest["complete"] is False and manifest["incomplete_reason"] == "queue_overflow"
    assert len([ln for ln in lines if ln["type"] == "input_audio_buffer.append"]) == 50  # what fit is kept
    assert verify_dir(folder).ok
    assert sample(metrics, "relay_recordings_total", status="incomplete") == 1


async def test_overflow_drop_keeps_the_call_and_marks_the_hole(tmp_path: Path) -> None:
    metrics = RelayMetrics(CollectorRegistry())
    rec = await Recorder.create(local_config(tmp_path, queue_size=20), metrics, relay_version="t")
    info = session_info()
    sink = rec.open(info, RecordingPolicy(on_overflow="drop"))
    call = Call(sink)
    call.speak(600)  # 30 appends into a queue of 20
    assert not sink.overflowed
    await rec._process_all()  # noqa: SLF001 - let the writer drain once
    call.speak(100)
    sink.close(call.summary())
    await settle(rec)
    await rec.aclose()
    manifest, lines, _, folder = read_local(tmp_path / "rec", info.session_id)
    dropped = [ln for ln in lines if ln["type"] == "recording.dropped"]
    assert dropped and dropped[0]["event"] == {"events": 10}
    assert manifest["incomplete_reason"] == "events_dropped"
    assert sample(metrics, "relay_recording_dropped_total", tenant="acme", policy="drop") == 10
    assert verify_dir(folder).ok


async def test_disabled_tenant_is_not_recorded(tmp_path: Path) -> None:
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    sink = rec.open(session_info(), RecordingPolicy(enabled=False))
    assert isinstance(sink, NullRecording)
    assert sink.record_event(client({"type": "x"}), 0) is True
    await rec.aclose()
    assert not (tmp_path / "rec").exists()


async def test_full_spool_refuses_new_sessions(tmp_path: Path) -> None:
    metrics = RelayMetrics(CollectorRegistry())
    rec = await Recorder.create(local_config(tmp_path, spool_max_mb=1), metrics, relay_version="t")
    rec.admit()
    (tmp_path / "spool" / "stuck").mkdir()
    (tmp_path / "spool" / "stuck" / "left.000001.raw").write_bytes(os.urandom(2 * 1024 * 1024))
    await rec._measure()  # noqa: SLF001 - the writer loop measures every fsync interval
    with pytest.raises(RecorderError, match="spool is full"):
        rec.admit()
    assert sample(metrics, "relay_recording_spool_bytes") >= 2 * 1024 * 1024
    assert sample(metrics, "relay_recording_spool_limit_bytes") == 1024 * 1024
    await rec.aclose()


async def test_second_process_cannot_share_the_spool(tmp_path: Path) -> None:
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    with pytest.raises(RecorderError, match="in use"):
        await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    await rec.aclose()


async def _recorded(tmp_path: Path) -> tuple[Path, Call]:
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink)
    call.start()
    call.speak(1000)
    rid, _, _ = call.respond(500)
    call.done(rid)
    sink.close(call.summary())
    await settle(rec)
    await rec.aclose()
    src = read_local(tmp_path / "rec", info.session_id)[3]
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    assert verify_dir(dst).ok
    return dst, call


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_verify_detects_one_changed_byte_in_the_audio(tmp_path: Path) -> None:
    folder, _ = await _recorded(tmp_path)
    _flip(folder / "audio.wav", 44 + 4 * 12_000)  # a caller sample half a second in
    report = verify_dir(folder)
    assert not report.ok
    assert any("audio.wav: SHA-256 differs" in p for p in report.problems)
    assert any("caller audio at frame 12000" in p or "caller audio at frame" in p for p in report.problems)


async def test_verify_detects_one_changed_byte_in_the_event_log(tmp_path: Path) -> None:
    folder, _ = await _recorded(tmp_path)
    content = bytearray(gzip.decompress((folder / "events.jsonl.gz").read_bytes()))
    i = content.index(b'"input_audio_buffer.append"', 2000)
    content[i + 1] = ord("I")  # one changed byte, then recompressed so the gzip is valid
    (folder / "events.jsonl.gz").write_bytes(gzip.compress(bytes(content)))
    report = verify_dir(folder)
    assert not report.ok
    assert any("hash mismatch, the line was changed" in p for p in report.problems)


async def test_verify_detects_one_changed_byte_in_the_manifest(tmp_path: Path) -> None:
    folder, _ = await _recorded(tmp_path)
    text = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").write_bytes(text.replace(b'"outcome": "ok"', b'"outcome": "ol"'))
    report = verify_dir(folder)
    assert not report.ok and any("digest" in p for p in report.problems)


async def test_shutdown_seals_open_sessions_as_incomplete(tmp_path: Path) -> None:
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink)
    call.start()
    call.speak(500)
    await rec.aclose()  # the session was never closed by the core
    manifest, lines, _, folder = read_local(tmp_path / "rec", info.session_id)
    assert manifest["complete"] is False and manifest["incomplete_reason"] == "relay_shutdown"
    assert manifest["close"]["outcome"] == "relay_shutdown"
    assert lines[-1]["type"] == "recording.close"
    assert verify_dir(folder).ok
    assert rec.open(session_info(), None).record_event(client({"type": "x"}), 0) is True  # closed: null sink


async def test_a_spool_write_failure_ends_the_call_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full cannot be produced here without a mount: the write itself is made to fail."""
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    ended: list[bool] = []
    sink.on_overflow = lambda: ended.append(True)
    call = Call(sink)
    call.start()
    call.speak(500)
    await rec._process_all()  # noqa: SLF001 - the first events are on the spool
    await rec._sync()  # noqa: SLF001

    def full(self: SessionSpool, channel: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SessionSpool, "flush_channel", full)
    call.speak(500)
    for _ in range(50):  # the session's next flush fails
        if ended:
            break
        await asyncio.sleep(0.05)
    assert ended == [True] and sink.overflowed and sink.incomplete_reason == "spool_error"
    assert not sink.record_event(client({"type": "input_audio_buffer.commit"}), call.t_us)  # the core ends it
    monkeypatch.undo()
    sink.close(call.summary())
    await settle(rec)
    await rec.aclose()
    manifest, _, _, folder = read_local(tmp_path / "rec", info.session_id)
    assert manifest["complete"] is False and manifest["incomplete_reason"] == "spool_error"
    report = verify_dir(folder)
    assert report.ok, report.problems  # incomplete, but what is there verifies


async def test_a_spool_that_fails_from_the_first_write_still_ends_in_a_verifiable_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: SessionSpool, *args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SessionSpool, "flush_channel", full)
    monkeypatch.setattr(SessionSpool, "append_events", full)
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    info = session_info()
    sink = rec.open(info, None)
    call = Call(sink)
    call.start()
    call.speak(500)
    await rec._process_all()  # noqa: SLF001
    await rec._sync()  # noqa: SLF001
    assert sink.incomplete_reason == "spool_error"
    monkeypatch.undo()  # the disk has room again
    sink.close(call.summary())
    await settle(rec, within=10)  # not retried for ever
    await rec.aclose()
    manifest, lines, _, folder = read_local(tmp_path / "rec", info.session_id)
    assert manifest["incomplete_reason"] == "spool_error" and lines == []
    report = verify_dir(folder)
    assert report.ok, report.problems
