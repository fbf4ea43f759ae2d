"""The model allow-list (handshake and events) and the event allow/deny policy."""

from __future__ import annotations

import pytest

from relay.errors import HandshakeRejected
from relay.events import C2U, U2C
from relay.verdicts import Drop, Forward, Reply, Terminate

from .helpers import c2u, chain, run, u2c

MODELS = [
    {"use": "models", "with": {"allow": ["gpt-realtime*"], "transcription": ["gpt-4o-mini-transcribe"]}}
]


@pytest.mark.parametrize(
    ("model", "intent", "ok"),
    [
        ("gpt-realtime", "", True),
        ("gpt-realtime-2.1-mini", "", True),
        ("gpt-4o-realtime-preview", "", False),
        ("", "transcription", True),
        ("", "", False),
    ],
)
def test_handshake(model: str, intent: str, ok: bool) -> None:
    policy = chain(MODELS)._handlers[0]
    if ok:
        policy.check_handshake(model, intent)  # type: ignore[attr-defined]
    else:
        with pytest.raises(HandshakeRejected) as info:
            policy.check_handshake(model, intent)  # type: ignore[attr-defined]
        assert (info.value.status, info.value.code) == (403, "model_not_allowed")


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        ({"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime"}}, True),
        ({"type": "session.update", "event_id": "e1", "session": {"model": "gpt-5"}}, False),
        ({"type": "response.create", "response": {"model": "o3"}}, False),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"transcription": {"model": "whisper-1"}}}},
            },
            False,
        ),
        (
            {
                "type": "transcription_session.update",
                "session": {"input_audio_transcription": {"model": "x"}},
            },
            False,
        ),
        (
            {
                "type": "session.update",
                "session": {"input_audio_transcription": {"model": "gpt-4o-mini-transcribe"}},
            },
            True,
        ),
    ],
)
def test_models_named_in_events(payload: dict, ok: bool) -> None:  # type: ignore[type-arg]
    verdict, audit = run(chain(MODELS), c2u(payload))
    if ok:
        assert verdict == Forward() and audit == []
    else:
        assert isinstance(verdict, Reply)
        assert verdict.events[0]["error"]["code"] == "model_not_allowed"
        assert [a.action for a in audit] == ["reject"]


EVENTS = [
    {
        "use": "events",
        "with": {
            "deny": {
                "client_to_upstream": ["conversation.item.retrieve"],
                "upstream_to_client": ["rate_limits.updated"],
            }
        },
    }
]


def test_denied_client_event_gets_an_error_and_is_not_forwarded() -> None:
    verdict, audit = run(
        chain(EVENTS), c2u({"type": "conversation.item.retrieve", "event_id": "e7", "item_id": "i"})
    )
    assert isinstance(verdict, Reply)
    assert verdict.events[0]["error"]["code"] == "event_not_allowed"
    assert verdict.events[0]["error"]["event_id"] == "e7"
    assert [(a.action, a.event_type) for a in audit] == [("block_event", "conversation.item.retrieve")]


def test_denied_upstream_event_is_dropped() -> None:
    verdict, _ = run(chain(EVENTS), u2c({"type": "rate_limits.updated", "rate_limits": []}))
    assert isinstance(verdict, Drop)


def test_deny_list_does_not_route_other_events() -> None:
    ch = chain(EVENTS)
    assert not ch.wants(C2U, "input_audio_buffer.append")
    assert not ch.wants(U2C, "response.output_audio.delta")


def test_allow_list_mode_and_terminate() -> None:
    spec = [
        {
            "use": "events",
            "with": {
                "allow": {"client_to_upstream": ["input_audio_buffer.append", "session.update"]},
                "on_client_violation": "terminate",
            },
        }
    ]
    ch = chain(spec)
    assert not ch.wants(C2U, "input_audio_buffer.append")  # allowed types skip the chain
    assert ch.wants(C2U, "anything.else")
    verdict, _ = run(ch, c2u({"type": "response.create"}))
    assert isinstance(verdict, Terminate) and verdict.code == 1008
