"""``relay export`` / ``relay verify`` / ``relay erase`` as an auditor runs them (real processes)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from prometheus_client import CollectorRegistry

from relay.config import RecordingConfig
from relay.metrics import RelayMetrics
from relay.recording import Recorder
from tests.recording.conftest import s3_recording_config
from tests.recording.helpers import Call, session_info, settle
from tests.support.seaweed import SeaweedFS

ROOT = Path(__file__).resolve().parents[2]


def relay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


async def record(cfg: RecordingConfig, n: int = 1) -> list[str]:
    rec = await Recorder.create(cfg, RelayMetrics(CollectorRegistry()), relay_version="cli-test")
    ids = []
    for _ in range(n):
        info = session_info()
        sink = rec.open(info, None)
        call = Call(sink)
        call.start()
        call.speak(800)
        call.down(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Where is my <order>?"}],
                },
            }
        )
        call.up(
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": "e",
                "audio_start_ms": 100,
                "item_id": "u1",
            }
        )
        call.speak(600)
        call.up(
            {
                "type": "input_audio_buffer.speech_stopped",
                "event_id": "e",
                "audio_end_ms": 700,
                "item_id": "u1",
            }
        )
        call.up(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "e",
                "item_id": "u1",
                "content_index": 0,
                "transcript": "I need help.",
            }
        )
        rid, item, _ = call.respond(2000, transcript="Sure, let me check.")
        call.done(rid, "cancelled")
        call.truncate(item, 150)
        call.wait(500)
        sink.close(call.summary())
        ids.append(info.session_id)
    await settle(rec)
    await rec.aclose()
    return ids


def write_config(tmp: Path, recording: dict[str, Any]) -> Path:
    path = tmp / "relay.yaml"
    path.write_text(yaml.safe_dump({"recording": recording}))
    return path


async def test_export_verify_erase_on_the_local_sink(tmp_path: Path) -> None:
    rec_cfg = {
        "sink": "local",
        "local_dir": str(tmp_path / "rec"),
        "spool_dir": str(tmp_path / "spool"),
        "fsync_interval": 0.2,
    }
    cfg_path = write_config(tmp_path, rec_cfg)
    a, b = await record(RecordingConfig(**rec_cfg), 2)  # type: ignore[arg-type]

    out = tmp_path / "export"
    r = relay("export", "--session", a, "--out", str(out), "--config", str(cfg_path))
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    assert {
        "audio.wav",
        "caller.wav",
        "assistant.wav",
        "transcript.txt",
        "transcript.vtt",
        "events.jsonl",
        "manifest.json",
    } <= names
    txt = (out / "transcript.txt").read_text()
    assert "Caller: I need help." in txt and "Assistant: Sure, let me check. [interrupted]" in txt
    assert "Caller: Where is my <order>?" in txt
    vtt = (out / "transcript.vtt").read_text()
    assert vtt.startswith("WEBVTT\n") and "<v Caller>Where is my &lt;order&gt;?" in vtt
    assert "<v Assistant>Sure, let me check. [interrupted]" in vtt
    cue_times = [line for line in vtt.splitlines() if " --> " in line]
    assert all(len(t) == len("00:00:00.000 --> 00:00:00.000") for t in cue_times)

    ok = relay("verify", str(out))
    assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok.stdout + ok.stderr
    by_id = relay("verify", a, "--config", str(cfg_path))
    assert by_id.returncode == 0, by_id.stdout + by_id.stderr

    wav = bytearray((out / "audio.wav").read_bytes())
    wav[44 + 4 * 100] ^= 0x80
    (out / "audio.wav").write_bytes(bytes(wav))
    bad = relay("verify", str(out))
    assert bad.returncode == 1 and bad.stdout.startswith("TAMPERED"), bad.stdout
    assert "caller audio at frame" in bad.stdout

    today = dt.datetime.now(dt.UTC).date().isoformat()
    many = tmp_path / "many"
    r = relay(
        "export",
        "--tenant",
        "acme",
        "--since",
        today,
        "--until",
        today,
        "--out",
        str(many),
        "--config",
        str(cfg_path),
    )
    assert r.returncode == 0, r.stderr
    assert {p.name for p in many.iterdir()} == {a, b}
    assert "export 2/2" in r.stderr  # progress on stderr
    assert relay("verify", str(many / b)).returncode == 0

    gone = relay("erase", "--session", a, "--reason", "GDPR art. 17", "--config", str(cfg_path))
    assert gone.returncode == 0, gone.stderr
    trail_path = next((tmp_path / "rec" / "erasures").rglob(f"session={a}.json"))
    trail = orjson.loads(trail_path.read_bytes())
    assert trail["status"] == "erased" and trail["reason"] == "GDPR art. 17" and len(trail["deleted"]) == 3
    assert relay("verify", a, "--config", str(cfg_path)).returncode == 2
    assert relay("export", "--out", str(tmp_path / "x"), "--config", str(cfg_path)).returncode == 2


async def test_verify_a_session_in_s3_by_id(tmp_path: Path, seaweedfs: SeaweedFS, bucket: str) -> None:
    cfg = s3_recording_config(tmp_path, seaweedfs, bucket, sse="AES256")
    (sid,) = await record(cfg)
    cfg_path = write_config(
        tmp_path,
        {
            "sink": "s3",
            "spool_dir": str(tmp_path / "spool"),
            "s3": {
                "bucket": bucket,
                "prefix": "calls",
                "endpoint_url": seaweedfs.endpoint,
                "addressing_style": "path",
            },
        },
    )
    r = relay("verify", sid, "--config", str(cfg_path))
    assert r.returncode == 0 and "OK calls/tenant=acme/" in r.stdout, r.stdout + r.stderr
    r = relay(
        "export",
        "--session",
        sid,
        "--tenant",
        "acme",
        "--out",
        str(tmp_path / "e"),
        "--config",
        str(cfg_path),
    )
    assert r.returncode == 0 and (tmp_path / "e" / "assistant.wav").is_file(), r.stderr
