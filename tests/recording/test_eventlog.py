"""Event-log lines and the SHA-256 hash chain (sans-I/O)."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from relay.events import string_span
from relay.recording import eventlog as el


def test_chain_definition_matches_the_docs() -> None:
    log = el.EventLog("sess_1")
    h0 = hashlib.sha256(b"realtime-relay/events/v1\nsess_1").digest()
    assert log.head == h0
    line = log.line(1500, "client_to_upstream", "session.update", b'{"type":"session.update","session":{}}')
    assert line.endswith(b"\n")
    body = line[:-1]
    canonical = body[:-75] + b"}"
    assert canonical == (
        b'{"seq":0,"t_us":1500,"dir":"client_to_upstream","type":"session.update",'
        b'"event":{"type":"session.update","session":{}}}'
    )
    h1 = hashlib.sha256(h0 + canonical).digest()
    assert orjson.loads(body)["hash"] == h1.hex() == log.head.hex()
    assert el.split_line(body) == (canonical, h1.hex())
    line2 = log.relay_line(2000, "policy.action", {"policy": "pii"})
    c2, claimed = el.split_line(line2[:-1])
    assert claimed == hashlib.sha256(h1 + c2).hexdigest()
    assert orjson.loads(line2)["seq"] == 1


def test_chain_resumes_from_seq_and_head() -> None:
    a = el.EventLog("s")
    a.line(0, "relay", "x", b"{}")
    b = el.EventLog("s", seq=a.seq, head=a.head)
    assert orjson.loads(b.line(1, "relay", "y", b"{}"))["seq"] == 1


def test_split_line_rejects_a_line_without_hash() -> None:
    with pytest.raises(ValueError):
        el.split_line(b'{"seq":0}')


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"type":"input_audio_buffer.append","audio":"QUJD"}', "QUJD"),
        ('{"type":"x", "audio" : "QUJD", "event_id":"e"}', "QUJD"),
        ('{"type":"x","name":"audio","audio":"QUJD"}', None),  # "audio" as a value first: unsure
        ('{"type":"x","meta":{"a":1},"audio":"QUJD"}', None),  # nested object before it
        ('{"type":"x","audio":"QU\\/JD"}', None),  # escaped slash
        ('{"type":"x","audio":123}', None),
    ],
)
def test_string_span(text: str, expected: str | None) -> None:
    span = string_span(text, "audio")
    assert (text[span[0] : span[1]] if span else None) == expected


def test_audio_ref_and_omitted_item_audio() -> None:
    ref = orjson.loads(el.audio_ref("caller", 480, 480, b"\x01\x02"))
    assert ref == {
        "track": "caller",
        "offset": 480,
        "duration": 480,
        "bytes": 2,
        "sha256": hashlib.sha256(b"\x01\x02").hexdigest(),
    }
    conv = orjson.loads(el.audio_ref("assistant", 0, 1, b"x", converted_from="audio/pcmu"))
    assert conv["converted"] is True and conv["format"] == "audio/pcmu"
    payload = {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": "AAAA"}, {"type": "input_text", "text": "hi"}],
        },
    }
    stripped = el.omit_item_audio(payload)
    assert stripped is not None
    part = stripped["item"]["content"][0]["audio"]
    assert part["omitted"] is True and part["bytes"] == 3
    assert stripped["item"]["content"][1] == {"type": "input_text", "text": "hi"}
    assert payload["item"]["content"][0]["audio"] == "AAAA"  # the original is untouched
    assert (
        el.omit_item_audio(
            {"type": "conversation.item.create", "item": {"content": [{"type": "input_text"}]}}
        )
        is None
    )
