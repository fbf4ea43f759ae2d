"""The redact policy: targets, fields, JSON arguments, and split values in the recording."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.events import C2U, U2C
from relay.verdicts import Forward

from .helpers import c2u, chain, metric, out_payload, run, u2c


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def redact(**spec: Any) -> list[dict[str, Any]]:
    return [{"use": "redact", "id": "pii", "with": spec}]


@pytest.mark.parametrize(
    ("spec", "payload", "path", "expected"),
    [
        (
            {"targets": ["upstream"]},
            user_text("reach me at ann@example.com"),
            ("item", "content", 0, "text"),
            "reach me at [REDACTED:email]",
        ),
        (
            {"targets": ["upstream"], "fields": ["instructions"]},
            {
                "type": "session.update",
                "session": {"type": "realtime", "instructions": "key sk-abcdefghij0123456789k"},
            },
            ("session", "instructions"),
            "key [REDACTED:secret]",
        ),
        (
            {"targets": ["upstream"], "replacement": "<{label}>"},
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "c1", "output": "ssn 123-45-6789"},
            },
            ("item", "output"),
            "ssn <ssn>",
        ),
        (
            {
                "targets": ["upstream"],
                "custom": [{"label": "order", "pattern": "ORD-[0-9]{6}"}],
                "detectors": ["email"],
            },
            {"type": "response.create", "response": {"instructions": "look up ORD-123456"}},
            ("response", "instructions"),
            "look up [REDACTED:order]",
        ),
    ],
)
def test_upstream_target_rewrites_client_events(
    spec: dict[str, Any], payload: dict[str, Any], path: tuple[Any, ...], expected: str
) -> None:
    ch = chain(redact(**spec))
    event = c2u(payload)
    verdict, audit = run(ch, event)
    node: Any = out_payload(verdict, event)
    for key in path:
        node = node[key]
    assert node == expected
    assert [(a.source, a.action, a.event_type) for a in audit] == [("pii", "redact", payload["type"])]
    assert "@" not in repr(audit) and "123-45" not in repr(audit)  # never the value


def test_upstream_target_does_not_touch_the_client_stream() -> None:
    ch = chain(redact(targets=["upstream"]))
    assert not ch.wants(U2C, "response.output_audio_transcript.done")
    assert not ch.wants(C2U, "input_audio_buffer.append")


def test_recording_is_the_default_target_and_leaves_the_live_stream_alone() -> None:
    ch = chain(redact())
    event = c2u(user_text("ann@example.com"))
    verdict, _ = run(ch, event)
    assert verdict == Forward()
    recorded = ch.recording_events(event)
    assert recorded[0].payload()["item"]["content"][0]["text"] == "[REDACTED:email]"


def test_client_target_redacts_each_delta_and_every_done() -> None:
    ch = chain(redact(targets=["client"]))
    delta = u2c(
        {"type": "response.output_text.delta", "item_id": "i1", "content_index": 0, "delta": "ip 10.0.0.1 ok"}
    )
    verdict, _ = run(ch, delta)
    assert out_payload(verdict, delta)["delta"] == "ip [REDACTED:ip] ok"
    done = u2c({"type": "response.output_audio_transcript.done", "item_id": "i1", "transcript": "a@b.io"})
    verdict, _ = run(ch, done)
    assert out_payload(verdict, done)["transcript"] == "[REDACTED:email]"
    item = u2c(
        {
            "type": "response.output_item.done",
            "item": {
                "id": "i1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "call 555-123-4567"}],
            },
        }
    )
    verdict, _ = run(ch, item)
    assert out_payload(verdict, item)["item"]["content"][0]["transcript"] == "call [REDACTED:phone]"


def test_fields_limit_what_is_scanned() -> None:
    ch = chain(redact(targets=["client"], fields=["output_transcript"]))
    text = u2c({"type": "response.output_text.done", "text": "a@b.io"})
    assert run(ch, text)[0] == Forward()
    assert ch.wants(U2C, "response.output_audio_transcript.delta")
    assert not ch.wants(U2C, "response.output_text.delta")


def test_json_arguments_stay_valid_json() -> None:
    ch = chain(redact(targets=["client"]))
    args = orjson.dumps({"email": "ann@example.com", "card": 4111111111111111, "n": 3}).decode()
    event = u2c(
        {"type": "response.function_call_arguments.done", "item_id": "i", "call_id": "c", "arguments": args}
    )
    verdict, audit = run(ch, event)
    new = orjson.loads(out_payload(verdict, event)["arguments"])
    assert new == {"email": "[REDACTED:email]", "card": "[REDACTED:card]", "n": 3}
    assert audit[0].detail["labels"] == {"email": 1, "card": 1}


def test_actions_are_counted_per_tenant_policy_action(metrics: Any) -> None:
    ch = chain(redact(targets=["upstream"]), metrics=metrics)
    run(ch, c2u(user_text("a@b.io and c@d.io")))
    run(ch, c2u(user_text("e@f.io")))
    assert metric(metrics, "relay_policy_actions_total", tenant="acme", policy="pii", action="redact") == 2


# -- recording: values split across deltas --------------------------------------------------------


def transcript_deltas(parts: list[str], item: str = "i1", response: str = "r1") -> list[Any]:
    return [
        u2c(
            {
                "type": "response.output_audio_transcript.delta",
                "response_id": response,
                "item_id": item,
                "output_index": 0,
                "content_index": 0,
                "delta": p,
            }
        )
        for p in parts
    ]


def record_all(ch: Any, events: list[Any]) -> list[Any]:
    out = []
    for e in events:
        out.extend(ch.recording_events(e))
    return out


@pytest.mark.parametrize(
    "parts",
    [
        ["my card is 4111 11", "11 1111 1111 thanks"],
        ["mail ann", "@exa", "mple.com", " please"],
        ["ssn 1", "2", "3", "-", "4", "5", "-", "6", "7", "8", "9", " done"],
        ["key sk-abcdefghij", "0123456789xyz and more"],
    ],
)
def test_split_value_is_redacted_in_recorded_deltas(parts: list[str]) -> None:
    ch = chain(redact())
    full = "".join(parts)
    done = u2c(
        {
            "type": "response.output_audio_transcript.done",
            "item_id": "i1",
            "content_index": 0,
            "transcript": full,
        }
    )
    recorded = record_all(ch, [*transcript_deltas(parts), done])
    deltas = [e for e in recorded if e.type.endswith(".delta")]
    assert len(deltas) == len(parts)  # every delta is recorded, in order, with its seq
    assert [e.seq for e in deltas] == sorted(e.seq for e in deltas)
    text = "".join(e.payload()["delta"] for e in deltas)
    assert "[REDACTED:" in text
    for digit_run in ("4111", "1111 1111", "ann@", "example.com", "6789", "0123456789"):
        assert digit_run not in text
    assert recorded[-1].type.endswith(".done")
    assert "[REDACTED:" in recorded[-1].payload()["transcript"]


def test_held_deltas_are_released_once_enough_text_follows() -> None:
    ch = chain(redact(holdback_chars=16))
    events = transcript_deltas(["hello there ", "this is a long enough sentence ", "to release the start"])
    first = ch.recording_events(events[0])
    assert first == []  # held: not enough text after it yet
    second = ch.recording_events(events[1])
    assert [e.seq for e in second] == [events[0].seq]
    assert second[0].text == events[0].text  # nothing to redact: the original bytes


def test_response_done_and_session_end_release_what_is_held() -> None:
    ch = chain(redact())
    held = transcript_deltas(["call me at ", "555-123-"], response="r9")
    assert record_all(ch, held) == []
    done = u2c({"type": "response.done", "response": {"id": "r9", "status": "cancelled", "output": []}})
    out = ch.recording_events(done)
    assert [e.seq for e in out] == [held[0].seq, held[1].seq, done.seq]
    more = transcript_deltas(["left over 555-123-4567"], item="i2", response="r10")
    assert record_all(ch, more) == []
    flushed = ch.flush_recording()
    assert flushed[0].payload()["delta"] == "left over [REDACTED:phone]"


def test_audio_events_are_not_touched_by_the_recording_side() -> None:
    ch = chain(redact())
    audio = u2c({"type": "response.output_audio.delta", "item_id": "i1", "delta": "AAAA"})
    assert not ch.recording_wants(U2C, audio.type)
    assert ch.recording_events(audio) == (audio,)
    append = c2u({"type": "input_audio_buffer.append", "audio": "AAAA"})
    assert ch.recording_events(append) == (append,)


def test_recording_audit_goes_to_the_given_list_or_is_kept_for_later() -> None:
    ch = chain(redact())
    event = c2u(user_text("a@b.io"))
    audit: list[Any] = []
    ch.recording_events(event, audit)
    assert [a.detail["target"] for a in audit] == ["recording"]
    ch.recording_events(c2u(user_text("c@d.io")))
    kept = ch.take_audit()
    assert len(kept) == 1 and ch.take_audit() == []
