"""relay.latency: first-audio and tool-call latencies from forwarded events (no I/O, injected clock)."""

from __future__ import annotations

import time

import orjson
import pytest
from prometheus_client import CollectorRegistry

from relay.events import C2U, U2C, Direction, Event
from relay.latency import MAX_PENDING_CALLS, LatencyTracker
from relay.metrics import RelayMetrics

MS = 1_000_000


class FakeObserver:
    def __init__(self) -> None:
        self.samples: list[float] = []

    def observe(self, amount: float) -> None:
        self.samples.append(amount)


def ev(direction: Direction, etype: str, **fields: object) -> Event:
    text = orjson.dumps({"type": etype, **fields}).decode()
    return Event(direction, etype, text, 0, 0)


class Clock:
    """Feeds a tracker events at chosen times (milliseconds) and keeps the fakes at hand."""

    def __init__(self) -> None:
        self.first = FakeObserver()
        self.tool = FakeObserver()
        self.tracker = LatencyTracker(self.first, self.tool)

    def at(self, ms: float, event: Event) -> Clock:
        self.tracker.on_event(event, int(ms * MS))
        return self


def audio(beta: bool = False) -> Event:
    return ev(U2C, "response.audio.delta" if beta else "response.output_audio.delta", delta="AAAA")


def approx(values: list[float]) -> list[object]:
    return [pytest.approx(v, abs=1e-9) for v in values]


@pytest.mark.parametrize(
    "turn_end",
    [
        ev(U2C, "input_audio_buffer.speech_stopped", audio_end_ms=900, item_id="item_1"),
        ev(C2U, "input_audio_buffer.commit"),
        ev(C2U, "response.create"),
    ],
    ids=["speech_stopped", "commit", "response.create"],
)
@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
def test_first_audio_from_each_kind_of_turn_end(turn_end: Event, beta: bool) -> None:
    c = Clock().at(1000, turn_end).at(1100, ev(U2C, "response.created")).at(1450, audio(beta))
    c.at(1500, audio(beta)).at(1600, audio(beta))
    assert c.first.samples == approx([0.45])
    assert not c.tracker.awaiting_audio


def test_earliest_turn_end_wins_and_one_sample_per_turn() -> None:
    c = Clock()
    c.at(100, ev(C2U, "input_audio_buffer.commit")).at(130, ev(C2U, "response.create"))
    c.at(150, ev(U2C, "response.created")).at(400, audio()).at(450, audio())
    c.at(500, ev(U2C, "response.done"))
    # Second turn, server VAD: speech stopped, the server creates the response by itself.
    c.at(2000, ev(U2C, "input_audio_buffer.speech_stopped")).at(2050, ev(U2C, "response.created"))
    c.at(2300, audio()).at(2350, audio()).at(2400, ev(U2C, "response.done"))
    assert c.first.samples == approx([0.3, 0.3])


def test_audio_without_a_turn_end_is_not_observed() -> None:
    c = Clock().at(0, ev(U2C, "response.created")).at(10, audio()).at(20, audio())
    assert c.first.samples == []


def test_speech_started_discards_a_premature_stop() -> None:
    c = Clock()
    c.at(100, ev(U2C, "input_audio_buffer.speech_stopped"))
    c.at(300, ev(U2C, "input_audio_buffer.speech_started"))  # the caller went on talking
    c.at(900, ev(U2C, "input_audio_buffer.speech_stopped"))
    c.at(950, ev(U2C, "response.created")).at(1200, audio())
    assert c.first.samples == approx([0.3])


def test_turn_end_during_an_answer_counts_against_the_next_answer() -> None:
    c = Clock().at(0, ev(C2U, "response.create")).at(10, ev(U2C, "response.created")).at(100, audio())
    c.at(200, ev(C2U, "input_audio_buffer.commit"))  # caller's next turn ends while audio streams
    c.at(250, audio()).at(300, ev(U2C, "response.done"))  # same answer: not the awaited audio
    c.at(320, ev(C2U, "response.create")).at(330, ev(U2C, "response.created")).at(700, audio())
    assert c.first.samples == approx([0.1, 0.5])


def test_answer_without_audio_ends_the_turn_unobserved() -> None:
    c = Clock().at(0, ev(C2U, "response.create")).at(10, ev(U2C, "response.created"))
    c.at(50, ev(U2C, "response.output_text.delta", delta="hi")).at(60, ev(U2C, "response.done"))
    assert not c.tracker.awaiting_audio
    c.at(5000, ev(U2C, "response.created")).at(5100, audio())  # unprompted audio much later
    assert c.first.samples == []


def test_tool_call_latency_and_the_turn_spans_the_tool_round_trip() -> None:
    c = Clock().at(0, ev(U2C, "input_audio_buffer.speech_stopped")).at(20, ev(U2C, "response.created"))
    c.at(200, ev(U2C, "response.function_call_arguments.done", call_id="call_A", arguments="{}", name="f"))
    c.at(210, ev(U2C, "response.done"))
    assert c.tracker.pending_calls == 1 and c.tracker.awaiting_audio
    output = {"type": "function_call_output", "call_id": "call_A", "output": "{}"}
    c.at(650, ev(C2U, "conversation.item.create", item=output))
    c.at(660, ev(C2U, "response.create")).at(670, ev(U2C, "response.created")).at(900, audio())
    assert c.tool.samples == approx([0.45])
    assert c.first.samples == approx([0.9])
    assert c.tracker.pending_calls == 0


def test_tool_outputs_that_do_not_match_are_ignored() -> None:
    c = Clock().at(0, ev(U2C, "response.function_call_arguments.done", call_id="call_A", arguments="{}"))
    c.at(10, ev(C2U, "conversation.item.create", item={"type": "function_call_output", "call_id": "call_B"}))
    c.at(20, ev(C2U, "conversation.item.create", item={"type": "message", "role": "user", "content": []}))
    c.at(30, ev(C2U, "conversation.item.create", item="not an object"))
    c.at(40, ev(C2U, "conversation.item.create", item={"type": "function_call_output", "call_id": 7}))
    assert c.tool.samples == [] and c.tracker.pending_calls == 1
    c.at(90, ev(C2U, "conversation.item.create", item={"type": "function_call_output", "call_id": "call_A"}))
    c.at(95, ev(C2U, "conversation.item.create", item={"type": "function_call_output", "call_id": "call_A"}))
    assert c.tool.samples == approx([0.09])  # answered once, observed once


def test_function_call_without_call_id_is_not_remembered() -> None:
    c = Clock().at(0, ev(U2C, "response.function_call_arguments.done", arguments="{}"))
    assert c.tracker.pending_calls == 0


def fc_output(call_id: object) -> Event:
    return ev(C2U, "conversation.item.create", item={"type": "function_call_output", "call_id": call_id})


def test_pending_calls_are_bounded_oldest_first() -> None:
    c = Clock()
    for i in range(MAX_PENDING_CALLS + 5):
        c.at(i, ev(U2C, "response.function_call_arguments.done", call_id=f"call_{i}"))
    assert c.tracker.pending_calls == MAX_PENDING_CALLS
    c.at(
        1000, ev(C2U, "conversation.item.create", item={"type": "function_call_output", "call_id": "call_0"})
    )
    assert c.tool.samples == []  # forgotten
    last = f"call_{MAX_PENDING_CALLS + 4}"
    c.at(1000, fc_output(last))
    assert c.tool.samples == approx([(1000 - (MAX_PENDING_CALLS + 4)) / 1000])


def test_direction_is_checked() -> None:
    """A client cannot move the latency metrics by sending server event types."""
    c = Clock().at(0, ev(C2U, "input_audio_buffer.commit"))
    c.at(10, ev(C2U, "response.output_audio.delta", delta="AAAA"))
    c.at(20, ev(C2U, "response.function_call_arguments.done", call_id="call_X"))
    c.at(30, ev(C2U, "input_audio_buffer.speech_started"))
    assert c.first.samples == [] and c.tracker.pending_calls == 0 and c.tracker.awaiting_audio
    c.at(40, ev(U2C, "response.create"))  # not a turn end when it comes from upstream
    c.at(50, ev(U2C, "response.created")).at(60, audio())
    assert c.first.samples == approx([0.06])


def test_clock_going_backwards_never_gives_a_negative_sample() -> None:
    c = Clock().at(100, ev(C2U, "response.create")).at(50, audio())
    assert c.first.samples == [0.0]


def test_unwatched_events_are_never_parsed() -> None:
    c = Clock().at(0, ev(C2U, "response.create"))
    for etype, direction in [
        ("input_audio_buffer.append", C2U),
        ("response.output_audio_transcript.delta", U2C),
        ("session.update", C2U),
        ("rate_limits.updated", U2C),
    ]:
        broken = Event(direction, etype, "{not json", 0, 0)  # payload() would raise
        c.tracker.on_event(broken, 5)
    delta = Event(U2C, "response.output_audio.delta", "{not json", 0, 0)
    c.tracker.on_event(delta, 7 * MS)
    assert c.first.samples == approx([0.007])


def test_works_with_real_histogram_children() -> None:
    m = RelayMetrics(CollectorRegistry())
    tracker = LatencyTracker(m.first_audio_seconds.labels("acme"), m.tool_call_seconds.labels("acme"))
    tracker.on_event(ev(C2U, "response.create"), 0)
    tracker.on_event(audio(), 250 * MS)
    reg = m.registry
    assert reg.get_sample_value("relay_first_audio_seconds_count", {"tenant": "acme"}) == 1
    assert reg.get_sample_value("relay_first_audio_seconds_sum", {"tenant": "acme"}) == pytest.approx(0.25)
    assert reg.get_sample_value("relay_first_audio_seconds_bucket", {"tenant": "acme", "le": "0.3"}) == 1


def test_ignored_events_cost_next_to_nothing() -> None:
    """The hot path: an append (client) or audio delta mid-answer (upstream) must stay cheap."""
    c = Clock().at(0, ev(C2U, "response.create")).at(1, ev(U2C, "response.created")).at(2, audio())
    append = ev(C2U, "input_audio_buffer.append", audio="AAAA")
    delta = audio()
    on_event = c.tracker.on_event
    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        on_event(append, i)
        on_event(delta, i)
    per_event = (time.perf_counter() - t0) / (2 * n)
    # ~0.1-0.2 µs on these machines; 2 µs leaves room for a loaded CI box and still catches a parse.
    assert per_event < 2e-6, f"{per_event * 1e6:.2f} µs per ignored event"
