"""The sans-I/O session state machine: errors, usage rules, conversation operations."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relay.sim.inputaudio import MAX_APPEND_CHARS
from relay.sim.session import SessionOptions, SimSession
from tests.sim.sdkcheck import validate_frames
from tests.support.audio import silence_pcm16, utterance_pcm16


def make(beta: bool = False, **opts: Any) -> SimSession:
    return SimSession(
        beta=beta, options=SessionOptions(voice_source="tone", **opts), now=lambda: 1_700_000_000.0
    )


def send(s: SimSession, event: dict[str, Any]) -> list[dict[str, Any]]:
    return s.handle(json.dumps(event))


def drain(s: SimSession) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while (batch := s.step()) is not None:
        out += batch[0]
    return out


def error_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert [e["type"] for e in events] == ["error"], events
    err: dict[str, Any] = events[0]["error"]
    return err


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def turn(s: SimSession, text: str) -> dict[str, Any]:
    send(s, user_text(text))
    events = send(s, {"type": "response.create"}) + drain(s)
    done: dict[str, Any] = events[-1]
    assert done["type"] == "response.done"
    validate_frames([json.dumps(e) for e in events], s.beta)
    return done["response"]


def test_usage_follows_the_token_rules_exactly() -> None:
    s = make()
    send(s, {"type": "session.update", "session": {"type": "realtime", "instructions": "x" * 200}})
    r1 = turn(s, "Hi!")  # reply "You said: Hi!" = 3 beeps of 250 ms
    assert r1["usage"] == {
        "total_tokens": 50 + 1 + 4 + 15,
        "input_tokens": 51,
        "output_tokens": 19,
        "input_token_details": {
            "text_tokens": 51,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": 4, "audio_tokens": 15},
    }
    # Context now: instructions 50, "Hi!" 1, assistant audio 750 ms = 8 tokens at 10/s.
    r2 = turn(s, "And now?")  # 2 tokens; reply "You said: And now?" 18 chars, 4 words = 1000 ms
    u2 = r2["usage"]
    assert (u2["input_tokens"], u2["input_token_details"]["audio_tokens"]) == (50 + 1 + 8 + 2, 8)
    assert u2["input_token_details"]["cached_tokens"] == 0  # shared prefix 51 < 64
    assert u2["output_token_details"] == {"text_tokens": 5, "audio_tokens": 20}
    r3 = turn(s, "Ok.")
    u3 = r3["usage"]
    # Prefix shared with r2's input: 50 + 1 + 8 + 2 = 61 → still under one 64-token block.
    assert u3["input_token_details"]["cached_tokens"] == 0
    assert u3["input_tokens"] == 50 + 1 + 8 + 2 + 10 + 1
    r4 = turn(s, "Bye")
    u4 = r4["usage"]
    # Shared prefix 72 → 64 cached: instructions 50 + "Hi!" 1 (text), audio 8, "And now?" 2,
    # then 3 of the 10 audio tokens of the second answer.
    assert u4["input_token_details"]["cached_tokens"] == 64
    assert u4["input_token_details"]["cached_tokens_details"] == {
        "text_tokens": 53,
        "audio_tokens": 11,
        "image_tokens": 0,
    }
    assert u4["total_tokens"] == u4["input_tokens"] + u4["output_tokens"]


def test_cancelled_response_bills_what_was_generated() -> None:
    s = make()
    send(s, user_text("Hello there"))
    send(s, {"type": "response.create"})
    s.step()  # output item + content part
    s.step()  # first 100 ms delta with the first transcript word
    events = send(s, {"type": "response.cancel"})
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"] == {
        "type": "cancelled",
        "reason": "client_cancelled",
    }
    assert done["usage"]["output_token_details"] == {"text_tokens": 1, "audio_tokens": 2}
    assert done["output"][0]["status"] == "incomplete"
    assert s.step() is None


def test_max_output_tokens_ends_incomplete() -> None:
    s = make()
    send(s, user_text("Hello there"))
    events = send(s, {"type": "response.create", "response": {"max_output_tokens": 10}}) + drain(s)
    done = events[-1]["response"]
    assert done["status"] == "incomplete" and done["status_details"]["reason"] == "max_output_tokens"
    assert done["usage"]["output_tokens"] <= 10


@pytest.mark.parametrize(
    ("beta", "event", "code", "param"),
    [
        (
            False,
            {"type": "session.update", "session": {"instructions": "x"}},
            "missing_required_parameter",
            "session.type",
        ),
        (
            False,
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/wav"}}}},
            },
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            False,
            {"type": "session.update", "session": {"type": "realtime", "voice": "ash"}},
            "unknown_parameter",
            "session.voice",
        ),
        (
            True,
            {"type": "session.update", "session": {"input_audio_format": "mp3"}},
            "invalid_value",
            "session.input_audio_format",
        ),
        (
            True,
            {"type": "session.update", "session": {"type": "realtime"}},
            "unknown_parameter",
            "session.type",
        ),
        (False, {"type": "input_audio_buffer.append", "audio": "not base64!"}, "invalid_value", "audio"),
        (False, {"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
        (False, {"type": "response.cancel"}, "response_cancel_not_active", None),
        (False, {"type": "no.such.event"}, "invalid_value", "type"),
        (
            False,
            {"type": "conversation.item.delete", "item_id": "item_x"},
            "item_delete_invalid_item_id",
            "item_id",
        ),
        (
            False,
            {"type": "conversation.item.retrieve", "item_id": "item_x"},
            "item_retrieve_invalid_item_id",
            "item_id",
        ),
        (
            False,
            {
                "type": "conversation.item.truncate",
                "item_id": "item_x",
                "content_index": 0,
                "audio_end_ms": 1,
            },
            "item_truncate_invalid_item_id",
            "item_id",
        ),
        (
            False,
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["audio", "text"]},
            },
            "invalid_value",
            "session.output_modalities",
        ),
    ],
)
def test_invalid_client_events_give_openai_errors(
    beta: bool, event: dict[str, Any], code: str, param: str | None
) -> None:
    s = make(beta)
    before = s.render_session()
    events = send(s, {**event, "event_id": "evt_client_1"})
    err = error_of(events)
    assert (err["type"], err["code"], err["param"], err["event_id"]) == (
        "invalid_request_error",
        code,
        param,
        "evt_client_1",
    )
    assert s.render_session() == before  # a rejected event changes nothing
    validate_frames([json.dumps(e) for e in events], beta)


def test_voice_cannot_change_after_audio_but_can_before() -> None:
    s = make()
    ok = send(
        s, {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}}}
    )
    assert ok[0]["session"]["audio"]["output"]["voice"] == "ash"
    turn(s, "Hello")
    err = error_of(
        send(
            s,
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "coral"}}},
            },
        )
    )
    assert err["code"] == "cannot_update_voice" and err["param"] == "session.audio.output.voice"
    same = send(
        s, {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}}}
    )
    assert same[0]["type"] == "session.updated"


def test_second_response_while_active_is_refused() -> None:
    s = make()
    send(s, user_text("Hello"))
    send(s, {"type": "response.create"})
    err = error_of(send(s, {"type": "response.create", "event_id": "evt_2"}))
    assert err["code"] == "conversation_already_has_active_response" and err["event_id"] == "evt_2"


def test_append_over_15_mib_is_refused() -> None:
    s = make()
    err = error_of(send(s, {"type": "input_audio_buffer.append", "audio": "A" * (MAX_APPEND_CHARS + 4)}))
    assert err["code"] == "string_above_max_length" and err["param"] == "audio"
    assert send(s, {"type": "input_audio_buffer.append", "audio": "AAAA"}) == []


def test_manual_commit_clear_and_item_operations() -> None:
    s = make()
    send(
        s,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        },
    )
    audio = silence_pcm16(300)
    assert send(s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}) == []
    assert [e["type"] for e in send(s, {"type": "input_audio_buffer.clear"})] == [
        "input_audio_buffer.cleared"
    ]
    assert (
        error_of(send(s, {"type": "input_audio_buffer.commit"}))["code"] == "input_audio_buffer_commit_empty"
    )
    send(s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()})
    committed = send(s, {"type": "input_audio_buffer.commit"})
    assert [e["type"] for e in committed] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    user_item = committed[0]["item_id"]
    retrieved = send(s, {"type": "conversation.item.retrieve", "item_id": user_item})[0]
    assert base64.b64decode(retrieved["item"]["content"][0]["audio"]) == audio
    resp = send(s, {"type": "response.create"}) + drain(s)
    assistant = resp[-1]["response"]["output"][0]["id"]
    too_long = send(
        s,
        {
            "type": "conversation.item.truncate",
            "item_id": assistant,
            "content_index": 0,
            "audio_end_ms": 60_000,
        },
    )
    assert error_of(too_long)["param"] == "audio_end_ms"
    cut = send(
        s,
        {"type": "conversation.item.truncate", "item_id": assistant, "content_index": 0, "audio_end_ms": 250},
    )
    assert cut[0] == {
        **cut[0],
        "type": "conversation.item.truncated",
        "audio_end_ms": 250,
        "item_id": assistant,
    }
    kept = send(s, {"type": "conversation.item.retrieve", "item_id": assistant})[0]["item"]["content"][0]
    assert len(base64.b64decode(kept["audio"])) == 250 * 48 and kept["transcript"] == ""
    assert (
        send(s, {"type": "conversation.item.delete", "item_id": user_item})[0]["type"]
        == "conversation.item.deleted"
    )
    assert [it.id for it in s.items] == [assistant]


def test_vad_turn_in_g711_session_and_padding_rules() -> None:
    from tests.support.audio import pcm16_to_ulaw

    s = make(beta=True)
    upd = send(
        s,
        {
            "type": "session.update",
            "session": {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"},
        },
    )
    assert upd[0]["session"]["input_audio_format"] == "g711_ulaw"
    ulaw = pcm16_to_ulaw(utterance_pcm16("good morning", lead_ms=1000, tail_ms=600))
    events: list[dict[str, Any]] = []
    for i in range(0, len(ulaw), 160):
        events += send(
            s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(ulaw[i : i + 160]).decode()}
        )
    events += drain(s)
    types = [e["type"] for e in events]
    assert types[:4] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
    ]
    start, stop = events[0]["audio_start_ms"], events[1]["audio_end_ms"]
    assert 690 <= start <= 1000 and stop > start
    done = events[-1]["response"]
    assert done["output_audio_format"] == "g711_ulaw"
    assert done["usage"]["input_token_details"]["audio_tokens"] == -(-(stop - start) // 100)
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
    assert done["usage"]["output_token_details"]["audio_tokens"] == -(-len(audio) * 20 // 8000)
    validate_frames([json.dumps(e) for e in events], beta=True)


def test_transcription_session_and_expiry() -> None:
    s = SimSession(
        kind="transcription",
        options=SessionOptions(voice_source="tone"),
        now=lambda: 100.0,
        max_session_seconds=60,
    )
    created = s.open()[0]["session"]
    assert created["type"] == "transcription" and created["expires_at"] == 160
    err = error_of(send(s, {"type": "response.create"}))
    assert err["code"] == "invalid_value"
    expired = s.expire()
    assert expired[-1]["error"]["code"] == "session_expired"
    validate_frames([json.dumps(e) for e in [s.open()[0], *expired]], beta=False)


def test_beta_transcription_session() -> None:
    s = SimSession(
        beta=True,
        kind="transcription",
        options=SessionOptions(voice_source="tone"),
        transcribe=lambda ms: "hi",
    )
    created = s.open()
    assert created[0]["session"]["object"] == "realtime.transcription_session"
    upd = send(
        s,
        {
            "type": "transcription_session.update",
            "session": {"input_audio_transcription": {"model": "whisper-1"}},
        },
    )
    assert upd[0]["type"] == "transcription_session.updated"
    assert (
        error_of(send(s, {"type": "transcription_session.update", "session": {"voice": "ash"}}))["code"]
        == "unknown_parameter"
    )
    events: list[dict[str, Any]] = []
    pcm = utterance_pcm16("hello", lead_ms=400, tail_ms=500)
    for i in range(0, len(pcm), 960):
        events += send(
            s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + 960]).decode()}
        )
    types = [e["type"] for e in events]
    assert "response.created" not in types
    assert (
        types[-1] == "conversation.item.input_audio_transcription.completed"
        and events[-1]["transcript"] == "hi"
    )
    validate_frames([json.dumps(e) for e in created + upd + events], beta=True)


def test_committed_audio_is_exactly_start_to_end_after_long_silence() -> None:
    s = make()
    pcm = silence_pcm16(4000) + utterance_pcm16("one two three", lead_ms=0, tail_ms=500)
    events: list[dict[str, Any]] = []
    for i in range(0, len(pcm), 48 * 30):
        events += send(
            s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + 48 * 30]).decode()}
        )
    start = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stop = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    item = send(s, {"type": "conversation.item.retrieve", "item_id": stop["item_id"]})[0]["item"]
    audio = base64.b64decode(item["content"][0]["audio"])
    assert len(audio) == (stop["audio_end_ms"] - start["audio_start_ms"]) * 48
    assert audio == pcm[start["audio_start_ms"] * 48 : stop["audio_end_ms"] * 48]
