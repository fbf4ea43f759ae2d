"""Object key layout, the policy-file section, and the manifest (sans-I/O)."""

from __future__ import annotations

import datetime as dt

import jsonschema
import pytest

from relay.recording import layout
from relay.recording import manifest as mf
from relay.recording.retention import RECORDING_SCHEMA, RecordingPolicy, parse_recording_policy

T0 = dt.datetime(2026, 11, 23, 23, 59, 59, tzinfo=dt.UTC).timestamp()


def test_key_layout_is_the_contract() -> None:
    loc = layout.location("calls/", "acme", T0, "sess_123")
    assert loc.folder == "calls/tenant=acme/date=2026-11-23/session=sess_123"
    assert loc.key(layout.AUDIO) == "calls/tenant=acme/date=2026-11-23/session=sess_123/audio.wav"
    assert loc.key(layout.EVENTS).endswith("/events.jsonl.gz")
    assert loc.key(layout.MANIFEST).endswith("/manifest.json")
    assert loc.erasure_key == "calls/erasures/tenant=acme/date=2026-11-23/session=sess_123.json"
    assert layout.location("", "acme", T0, "s").folder == "tenant=acme/date=2026-11-23/session=s"
    assert layout.parse_folder("calls", loc.key(layout.AUDIO)) == loc
    assert layout.parse_folder("calls", "other/tenant=a/date=2026-01-01/session=x/") is None


def test_hostile_names_cannot_escape_their_folder() -> None:
    loc = layout.location("p", "../../etc", T0, "a/b\nc")
    assert loc.folder == "p/tenant=..%2F..%2Fetc/date=2026-11-23/session=a%2Fb%0Ac"
    assert layout.parse_folder("p", loc.folder) == loc
    assert layout.component("..") == "%2E%2E"
    assert layout.spool_name(".hidden") == "%2Ehidden"


def test_dates_between() -> None:
    assert layout.dates_between(dt.date(2026, 2, 27), dt.date(2026, 3, 1)) == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
    ]


def test_parse_recording_policy() -> None:
    p = parse_recording_policy(
        {"enabled": True, "retention": {"mode": "COMPLIANCE", "days": 30}, "storage_class": "STANDARD_IA"},
        "recording",
    )
    assert p == RecordingPolicy(True, "COMPLIANCE", 30, "STANDARD_IA")
    until = p.retain_until(T0)
    assert until is not None and until - dt.datetime.fromtimestamp(T0, dt.UTC) == dt.timedelta(days=30)
    assert parse_recording_policy(None, "recording") == RecordingPolicy()
    assert parse_recording_policy(False, "recording").enabled is False
    assert RecordingPolicy().retain_until(T0) is None


@pytest.mark.parametrize(
    "node,message",
    [
        (
            {"retention": {"mode": "governance", "days": 1}},
            "recording.retention.mode: expected GOVERNANCE or COMPLIANCE",
        ),
        ({"retention": {"mode": "GOVERNANCE"}}, "recording.retention.days: required"),
        (
            {"retention": {"mode": "GOVERNANCE", "days": 0}},
            "recording.retention.days: expected a whole number",
        ),
        ({"retention": {"mode": "GOVERNANCE", "days": True}}, "recording.retention.days"),
        ({"retention": {"mode": "GOVERNANCE", "days": 1, "x": 1}}, "recording.retention.x: unknown key"),
        ({"enabled": "yes"}, "recording.enabled: expected true or false"),
        ({"storage_class": "FAST"}, "recording.storage_class: expected one of"),
        ({"on_overflow": "ignore"}, "recording.on_overflow: expected terminate or drop"),
        ({"bucket": "x"}, "recording.bucket: unknown key"),
        ([1], "recording: expected a mapping"),
    ],
)
def test_bad_policies_name_the_key_and_the_schema_agrees(node: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_recording_policy(node, "recording")
    assert str(err.value).startswith(message)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(node, RECORDING_SCHEMA)


def test_schema_accepts_what_the_parser_accepts() -> None:
    for node in (
        None,
        False,
        {"enabled": False},
        {"retention": {"mode": "GOVERNANCE", "days": 3650}, "on_overflow": "drop"},
    ):
        jsonschema.validate(node, RECORDING_SCHEMA)
        parse_recording_policy(node, "recording")


def test_manifest_digest_detects_any_change() -> None:
    m = mf.build(
        info={
            "session_id": "s",
            "tenant": "acme",
            "model": "gpt-realtime",
            "dialect": "ga",
            "started_at": T0,
        },
        summary={
            "ended_at": T0 + 10,
            "duration_s": 10.0,
            "client_close_code": 1000,
            "usage": {"usd": 0.5, "tokens": {"total": 3}},
        },
        audio={
            "sample_rate": 24000,
            "frames": 240000,
            "caller_frames": 24000,
            "assistant_frames": 48000,
            "heard_frames": 36000,
        },
        events={"count": 3, "head": "ab"},
        objects={},
        storage={"sink": "local"},
        retention=None,
        relay_version="1.0",
        complete=True,
        incomplete_reason=None,
        recorded_at=T0 + 11,
    )
    assert m["audio_seconds"] == {"in": 1.0, "out": 2.0, "heard": 1.5}
    assert m["started_at"] == "2026-11-23T23:59:59Z" and m["usd"] == 0.5
    blob = mf.encode(m)
    decoded = mf.decode(blob)
    assert decoded["digest"] == mf.digest(decoded)
    decoded["tenant"] = "acmf"
    assert decoded["digest"] != mf.digest(decoded)
