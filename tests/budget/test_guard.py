"""The per-session guard, driven without sockets against a memory-store service."""

import asyncio
from decimal import Decimal
from fractions import Fraction

import orjson
import pytest

from relay.actions import Call, Close, Send
from relay.budget.units import Amounts, usd_to_nano
from relay.budget.windows import windows
from relay.contracts import SessionSummary
from relay.errors import HandshakeRejected
from relay.events import C2U, U2C

from .helpers import (
    Clock,
    Driver,
    append,
    audio_delta,
    client,
    info,
    response_created,
    response_done,
    service,
    spec,
    upstream,
    usage,
)


def summary() -> SessionSummary:
    return SessionSummary(0.0, 0.0, 1000, "", 1000, "", "client_closed", 0, 0)


def sample(svc, name, **labels):
    return svc.metrics.registry.get_sample_value(name, labels) or 0.0


async def start(svc, sp=None, sid="rs_1", model="gpt-realtime-2"):
    i = info(sid, model=model)
    adm = await svc.admit(i, sp)
    return Driver(svc.guard(i, sp, adm))


async def settle_background(svc):
    if svc._tasks:
        await asyncio.wait(list(svc._tasks), timeout=2)


# -- metering ---------------------------------------------------------------------------------


async def test_audio_seconds_exact_across_formats_and_heard():
    svc = service()
    d = await start(svc)
    for _ in range(50):
        await d.feed(append(960))  # 1 s of PCM16
    await d.feed(
        upstream(
            "session.updated",
            session={
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}},
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                },
            },
        )
    )
    for _ in range(25):
        await d.feed(append(160))  # 0.5 s of G.711
    await d.feed(
        upstream("response.output_item.added", response_id="resp_1", item={"id": "item_1", "type": "message"})
    )
    for _ in range(20):
        await d.feed(audio_delta(4800, "item_1"))  # 2 s generated
    await d.feed(audio_delta(24000, "item_2", beta=True))  # 0.5 s, beta event name
    await d.feed(client("conversation.item.truncate", item_id="item_1", content_index=0, audio_end_ms=700))
    s = summary()
    d.guard.close(s)
    await settle_background(svc)
    m = d.guard.meter
    assert m.input_seconds == Fraction(3, 2) and m.output_seconds == Fraction(5, 2)
    assert m.heard_seconds == Fraction(7, 10) + Fraction(1, 2)
    assert s.usage["audio_seconds"] == {"input": 1.5, "output": 2.5, "heard": 1.2}
    assert s.usage["audio_bytes"] == {"input": 50 * 960 + 25 * 160, "output": 20 * 4800 + 24000}
    assert sample(svc, "relay_audio_seconds_total", tenant="acme", direction="input") == pytest.approx(1.5)
    assert sample(svc, "relay_audio_seconds_total", tenant="acme", direction="output") == pytest.approx(2.5)
    assert sample(svc, "relay_audio_seconds_total", tenant="acme", direction="heard") == pytest.approx(1.2)
    view = await svc.store.view("acme", windows(svc.wall()))
    assert view.used[1].ain == 50 * 960 + 25 * 160 * 6 and view.used[1].aout == 120000


async def test_response_is_reserved_before_it_starts_and_settled_on_done():
    svc = service()
    d = await start(svc, spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 100}]))
    create = client("response.create", event_id="evt_c1")
    held = d.guard.before_forward(create)
    assert len(held) == 1 and isinstance(held[0], Call) and held[0].hold
    await d.run(held)
    assert d.sent[-1].to is C2U and d.sent[-1].text == create.text  # let through unchanged
    view = await svc.store.view("acme", windows(svc.wall()))
    assert view.reserved.usd > 0
    assert d.guard.before_forward(response_created("resp_1")) is None  # matches the client's request
    await d.feed(
        response_done(
            "resp_1", usage=usage(text_in=119, audio_in=13, cached_text=64, text_out=30, audio_out=91)
        )
    )
    await settle_background(svc)
    view = await svc.store.view("acme", windows(svc.wall()))
    assert view.reserved == Amounts()
    assert (
        view.used[1].usd == 7_205_600 and view.used[1].tokens == 253
    )  # the hand computation in test_pricing
    assert sample(svc, "relay_cost_usd_total", tenant="acme", model="gpt-realtime-2") == pytest.approx(
        0.0072056
    )
    assert (
        sample(svc, "relay_tokens_total", tenant="acme", model="gpt-realtime-2", kind="input_text_cached")
        == 64
    )


async def test_cancelled_and_failed_responses_are_billed_from_their_usage():
    svc = service()
    d = await start(svc)
    await d.feed(response_created("r1"))
    await d.feed(response_done("r1", "cancelled", usage(audio_in=20, audio_out=40)))
    await d.feed(response_created("r2"))
    await d.feed(response_done("r2", "failed", usage()))
    s = summary()
    d.guard.close(s)
    await settle_background(svc)
    expected = (20 * Decimal(32) + 40 * Decimal(64)) / 1_000_000
    assert s.usage["cost_usd_exact"] == str(expected)
    assert s.usage["responses"] == {"cancelled": 1, "failed": 1}
    assert (await svc.store.view("acme", windows(svc.wall()))).used[2].usd == usd_to_nano(expected)


async def test_transcription_usage_is_priced_at_the_asr_model():
    svc = service()
    d = await start(svc)
    await d.feed(
        upstream(
            "session.created",
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
            },
        )
    )
    await d.feed(
        upstream(
            "conversation.item.input_audio_transcription.completed",
            item_id="i",
            content_index=0,
            transcript="hi",
            usage={
                "type": "tokens",
                "input_tokens": 13,
                "output_tokens": 4,
                "total_tokens": 17,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 13},
            },
        )
    )
    s = summary()
    d.guard.close(s)
    expected = (13 * Decimal(3) + 4 * Decimal(5)) / 1_000_000
    assert s.usage["cost_usd_exact"] == str(expected)
    assert sample(
        svc, "relay_cost_usd_total", tenant="acme", model="gpt-4o-mini-transcribe"
    ) == pytest.approx(float(expected))
    assert (
        sample(svc, "relay_tokens_total", tenant="acme", model="gpt-4o-mini-transcribe", kind="input_audio")
        == 13
    )


# -- enforcement ------------------------------------------------------------------------------


async def test_session_exhausting_its_budget_gets_error_then_1008_after_the_response():
    svc = service()
    sp = spec(limits=[{"name": "per_call", "metric": "usd", "per": "session", "limit": 0.01}])
    d = await start(svc, sp)
    await d.feed(upstream("session.updated", session={"type": "realtime", "max_output_tokens": 50}))
    await d.feed(client("response.create"))
    await d.feed(response_created("r1"))
    await d.feed(response_done("r1", usage=usage(audio_in=100, audio_out=140)))  # 0.0032 + 0.00896 > 0.01
    assert d.closed == Close(1008, "budget exceeded: per_call", "budget")
    err = d.errors()[-1]
    assert err["code"] == "budget_exceeded" and err["param"] == "per_call"
    assert "per_call" in err["message"] and "exhausted" in err["message"]
    assert d.types_sent()[-2:] == ["response.done", "error"]  # the response finished first
    records = d.guard.drain_audit()
    assert [(r.kind, r.source, r.action) for r in records] == [("budget", "per_call", "exhausted")]
    assert sample(svc, "relay_budget_rejections_total", tenant="acme", budget="per_call") == 1


async def spent_elsewhere(svc, usd: int) -> None:
    """Another session (on this or another replica) used ``usd`` nano-USD of the tenant's day."""
    now = svc.wall()
    await svc.store.commit("acme", "", Amounts(usd=usd), windows(now), now)


async def test_response_that_cannot_fit_is_refused_with_the_clients_event_id():
    svc = service()
    sp = spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 1}])
    d = await start(svc, sp)
    await spent_elsewhere(svc, 900_000_000)  # 0.90 of 1 USD: less than a response's worst case left
    held = d.guard.before_forward(client("response.create", event_id="evt_42"))
    assert [type(a) for a in held] == [Call]  # this replica did not know: the ledger decides
    await d.run(held)
    err = d.errors()[0]
    assert err["event_id"] == "evt_42" and err["param"] == "daily" and "resets at" in err["message"]
    assert "cannot cover another response" in err["message"]
    assert d.closed.code == 1008
    assert not [s for s in d.sent if s.to is C2U]  # the response.create never reached upstream
    assert d.guard.before_forward(client("response.create")) == ()  # closing: later requests are dropped


async def test_admission_refuses_a_tenant_that_cannot_afford_one_response():
    svc = service()
    sp = spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 1}])
    await spent_elsewhere(svc, 800_000_000)
    with pytest.raises(HandshakeRejected) as refused:
        await svc.admit(info("rs_2"), sp)
    assert refused.value.status == 429 and refused.value.code == "budget_exceeded"
    assert "cannot cover" in refused.value.message and int(refused.value.headers["Retry-After"]) > 0
    transcription = info("rs_3")
    transcription.intent = "transcription"  # no responses in a transcription session
    await svc.admit(transcription, sp)
    cheap = spec(
        limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 1}], reserve_output_tokens=1000
    )
    await svc.admit(info("rs_4"), cheap)  # 1000 output tokens at most: 0.064 USD fits


async def test_auto_response_from_server_vad_is_reserved_when_seen():
    svc = service()
    sp = spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 10}])
    d = await start(svc, sp)
    created = response_created("resp_vad")
    held = d.guard.before_forward(created)
    assert isinstance(held[0], Call) and held[0].hold
    await d.run(held)
    assert d.sent[-1].to is U2C and d.sent[-1].text == created.text
    assert (await svc.store.view("acme", windows(svc.wall()))).reserved.usd > 0


async def test_refused_auto_response_is_cancelled_upstream():
    svc = service()
    sp = spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 1}])
    d = await start(svc, sp)
    await spent_elsewhere(svc, 999_000_000)
    await d.feed(response_created("resp_vad"))
    cancel = [orjson.loads(s.text) for s in d.sent if s.to is C2U]
    assert cancel == [{"type": "response.cancel", "response_id": "resp_vad"}]
    assert d.types_sent() == ["response.cancel", "error"] and d.closed.code == 1008
    s = summary()
    d.guard.close(s)
    assert s.usage["responses"] == {"abandoned": 1} and s.usage["cost_usd"] > 0  # its input was processed


async def test_window_budget_used_by_another_session_refuses_the_next_response():
    svc = service()
    sp = spec(
        limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 1}], reserve_output_tokens=100
    )
    a = await start(svc, sp, "rs_a")
    b = await start(svc, sp, "rs_b")
    await a.feed(client("response.create"))
    await a.feed(response_created("ra"))
    await b.feed(client("response.create"))  # b reserves while a's response is still open
    await a.feed(response_done("ra", usage=usage(audio_out=15000)))  # 0.96 USD
    await settle_background(svc)
    await b.feed(response_created("rb"))
    await b.feed(response_done("rb", usage=usage(audio_out=700)))  # takes the day over 1 USD
    await settle_background(svc)
    assert b.closed is not None and b.closed.code == 1008
    await a.feed(client("response.create", event_id="again"))
    assert a.closed is not None and a.errors()[-1]["event_id"] == "again"
    with pytest.raises(Exception) as refused:
        await svc.admit(info("rs_c"), sp)
    assert refused.value.status == 429 and refused.value.code == "budget_exceeded"
    assert "daily" in refused.value.message and int(refused.value.headers["Retry-After"]) > 0


async def test_input_audio_limit_immediately_drops_the_frame_and_closes():
    svc = service()
    sp = spec(
        limits=[{"name": "ears", "metric": "audio_seconds_in", "per": "session", "limit": 1}],
        on_exhausted="immediately",
    )
    d = await start(svc, sp)
    for _ in range(49):
        assert d.guard.before_forward(append(960)) is None
    actions = d.guard.before_forward(append(960))  # reaches exactly 1 s
    assert [type(a) for a in actions] == [Send, Close] and actions[1].code == 1008
    assert orjson.loads(actions[0].text)["error"]["param"] == "ears"


async def test_after_response_waits_for_the_response_in_flight():
    svc = service()
    sp = spec(
        limits=[{"name": "mouth", "metric": "audio_seconds_out", "per": "session", "limit": 1}],
        reserve_output_tokens=10,
    )
    d = await start(svc, sp)
    await d.feed(client("response.create"))
    await d.feed(response_created("r1"))
    for _ in range(15):
        await d.feed(audio_delta(4800, response_id="r1"))  # 1.5 s: over, but the response goes on
    assert d.closed is None
    await d.feed(response_done("r1", usage=usage(audio_out=30)))
    assert d.closed is not None and d.closed.code == 1008


async def test_upstream_error_for_a_create_releases_its_reservation():
    svc = service()
    d = await start(svc, spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 10}]))
    await d.feed(client("response.create", event_id="evt_x"))
    assert (await svc.store.view("acme", windows(svc.wall()))).reserved.usd > 0
    await d.feed(
        upstream(
            "error",
            error={
                "type": "invalid_request_error",
                "code": "conversation_already_has_active_response",
                "message": "busy",
                "param": None,
                "event_id": "evt_x",
            },
        )
    )
    await settle_background(svc)
    assert (await svc.store.view("acme", windows(svc.wall()))).reserved == Amounts()
    assert d.types_sent()[-1] == "error"  # the client still sees upstream's error


async def test_warning_once_per_window_with_audit_and_metric():
    svc = service()
    sp = spec(
        limits=[{"name": "daily", "metric": "tokens", "per": "day", "limit": 1000, "warn_at": 0.5}],
        reserve_output_tokens=100,
    )
    d = await start(svc, sp)
    for n, rid in ((400, "r1"), (200, "r2"), (100, "r3")):
        await d.feed(client("response.create"))
        await d.feed(response_created(rid))
        await d.feed(response_done(rid, usage=usage(text_out=n)))
        await settle_background(svc)
    warns = [r for r in d.guard.drain_audit() if r.action == "warn"]
    assert len(warns) == 1 and warns[0].source == "daily" and warns[0].detail["used"] == 600
    assert sample(svc, "relay_budget_warnings_total", tenant="acme", budget="daily") == 1
    assert sample(svc, "relay_budget_remaining", tenant="acme", budget="daily") == 300
    assert sample(svc, "relay_budget_used_ratio", tenant="acme", budget="daily") == pytest.approx(0.7)


async def test_abandoned_response_is_charged_an_estimate_at_close():
    svc = service()
    d = await start(svc, spec(limits=[{"name": "daily", "metric": "usd", "per": "day", "limit": 10}]))
    create = client("response.create")
    await d.feed(create)
    await d.feed(response_created("r1"))
    await d.feed(
        upstream("response.output_item.added", response_id="r1", item={"id": "it", "type": "message"})
    )
    await d.feed(audio_delta(48000, "it", "r1"))  # 1 s = 20 output tokens
    s = summary()
    d.guard.close(s)
    await settle_background(svc)
    # input bound: the response.create's characters as text tokens at $4/M, 64 overhead tokens at
    # the highest input rate ($32/M); the 20 streamed audio tokens at $64/M
    expected = (len(create.text) * Decimal(4) + 64 * Decimal(32) + 20 * Decimal(64)) / 1_000_000
    assert s.usage["cost_usd_exact"] == str(expected) and s.usage["responses"] == {"abandoned": 1}
    view = await svc.store.view("acme", windows(svc.wall()))
    assert view.used[1].usd == usd_to_nano(expected) and view.reserved == Amounts()


# -- timers -----------------------------------------------------------------------------------


async def test_idle_timeout_closes_with_1000():
    clock = Clock()
    svc = service(clock=clock, tick_seconds=0.01)
    d = await start(svc, spec(idle_timeout_seconds=5))
    await d.feed(append(960))
    task = asyncio.ensure_future(d.ticker.thunk())
    await asyncio.sleep(0.05)
    assert not task.done()
    clock.advance(6)
    actions = await asyncio.wait_for(task, 2)
    assert actions[-1] == Close(1000, "idle timeout", "idle_timeout")
    assert orjson.loads(actions[0].text)["error"]["code"] == "idle_timeout"


async def test_max_session_length_closes_with_1008():
    clock = Clock()
    svc = service(clock=clock, tick_seconds=0.01)
    d = await start(svc, spec(max_session_seconds=60))
    await d.feed(append(960))
    task = asyncio.ensure_future(d.ticker.thunk())
    clock.advance(61)
    actions = await asyncio.wait_for(task, 2)
    assert (
        actions[-1].code == 1008
        and orjson.loads(actions[0].text)["error"]["code"] == "session_length_exceeded"
    )


async def test_ticker_flushes_metered_audio_and_stops_at_close():
    clock = Clock()
    svc = service(clock=clock, tick_seconds=0.01, flush_seconds=1)
    d = await start(
        svc, spec(limits=[{"name": "h", "metric": "audio_seconds_in", "per": "hour", "limit": 600}])
    )
    for _ in range(100):
        await d.feed(append(960))
    task = asyncio.ensure_future(d.ticker.thunk())
    clock.advance(2)
    for _ in range(100):
        if (await svc.store.view("acme", windows(svc.wall()))).used[0].ain:
            break
        await asyncio.sleep(0.01)
    assert (await svc.store.view("acme", windows(svc.wall()))).used[0].ain == 96000
    d.guard.close(summary())
    assert await asyncio.wait_for(task, 2) == ()
