"""``BudgetGuard``: metering and budget enforcement for one session (``contracts.SessionGuard``).

Rules of this module:
- Sans-I/O: ``before_forward``/``after_forward``/``close`` never await. Whatever needs the ledger
  comes out as ``Call`` actions whose thunks await the service (``relay.budget.service``).
- Every response is paid for before it starts. A client ``response.create`` is held
  (``Call(hold=True)``) until its worst-case cost is reserved; a ``response.created`` that no
  client request announced (server VAD) is held the same way before it reaches the client. A
  refusal sends ``error`` (code ``budget_exceeded``) and closes with 1008; a refused auto-response is
  also cancelled upstream. ``response.done`` settles at the real usage, whatever its status.
- Usage that is not a response (input audio, output audio, transcription) accumulates locally and
  is written to the ledger on settle and every ``flush_seconds`` by the session's ticker.
- The ticker is a background ``Call`` started by the first ``after_forward``: it sleeps
  ``tick_seconds`` at a time and ends the session on idle timeout (1000) or maximum length (1008).
- Audit records (kind ``budget``: warn, exhausted, reject) wait in ``pending_audit`` for the core
  (``drain_audit()`` takes them in tests and tools).
- Per-event cost: an audio event is one dict lookup and a few integer additions (output deltas
  are measured in the wire text, not parsed).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.actions import Action, Call, Close, Send
from relay.budget import enforce as E
from relay.budget.enforcer import NOTHING, Enforcer, synth
from relay.budget.meter import Meter, b64_decoded_len, b64_len_in, output_cap
from relay.budget.pricing import ModelPrices, TokenUsage, response_cost, transcription_cost
from relay.budget.report import SessionReport
from relay.budget.spec import BudgetSpec, Limit
from relay.budget.tally import Tally
from relay.budget.units import Amounts, usd_to_nano
from relay.contracts import SessionInfo, SessionSummary
from relay.events import C2U, U2C, Event, error_event, string_span
from relay.verdicts import AuditRecord

if TYPE_CHECKING:
    from relay.budget.service import Admission, BudgetService


@dataclass(slots=True)
class _Response:
    rid: str
    """Reservation id ("" when nothing was reserved)."""
    input_bound: E.InputBound
    out_ticks: int = 0


class BudgetGuard:
    def __init__(
        self,
        service: BudgetService,
        info: SessionInfo,
        spec: BudgetSpec | None,
        admission: Admission,
        prices: ModelPrices,
    ) -> None:
        self.service = service
        self.info = info
        self.spec = spec
        self.admission = admission
        self.prices = prices
        self.meter = Meter()
        self.report = SessionReport(service.metrics, info, prices)
        limits = spec.limits if spec else ()
        self._limits = limits
        self._checks = E.checks_for(spec)
        self._in_limits = E.limits_for_metric(limits, "audio_seconds_in", "audio_seconds")
        self._out_limits = E.limits_for_metric(limits, "audio_seconds_out", "audio_seconds")
        self._audio_limits = E.limits_for_metric(
            limits, "audio_seconds_in", "audio_seconds_out", "audio_seconds"
        )
        self._audio_room = 0
        """Ticks of audio surely left under every audio limit: events only count it down, and a
        full check runs when it reaches zero (or after the ledger reported new totals)."""
        self.tally = Tally(admission.view, admission.window_ids)
        self.enforcer = Enforcer(spec, self.tally, self.report, service.wall)
        self.pending_audit = self.enforcer.audit
        """The enforcer's audit records (``SessionGuard.pending_audit``): the core drains them."""
        self._creates: deque[tuple[str, str | None]] = deque()
        """Reservations for client response.create not yet matched to a response.created."""
        self._responses: dict[str, _Response] = {}
        self._item_response: dict[str, str] = {}
        self._context = (0, 0, 0)
        """The last response's context: (text, audio, other) tokens."""
        self._growth_chars = 0
        self._in_ticks_mark = 0
        self._n = 0
        self._closed = False
        self._ticker = False
        now_ns = service.mono_ns()
        self._start_ns = info.started_ns or now_ns
        self._last_client_ns = now_ns
        self._last_flush_ns = now_ns

    # -- SessionGuard ------------------------------------------------------------------------

    def before_forward(self, event: Event) -> Sequence[Action] | None:
        if event.direction is C2U:
            if event.recv_ns > self._last_client_ns:
                self._last_client_ns = event.recv_ns
            t = event.type
            if t == "input_audio_buffer.append":
                return self._on_append(event)
            if t == "response.create":
                return self._on_response_create(event)
            if t == "conversation.item.truncate":
                self._on_truncate(event)
            elif t in _CONTEXT_EVENTS:
                self._growth_chars += len(event.text)
            return None
        t = event.type
        if t == "response.output_audio.delta" or t == "response.audio.delta":
            return self._on_audio_delta(event)
        if t == "response.created":
            return self._on_response_created(event)
        if t == "response.output_item.added":
            self._on_item_added(event)
        elif t in _SESSION_EVENTS:
            session = event.payload().get("session")
            if isinstance(session, dict):
                self.meter.config.apply(session)
        elif t == "error":
            return self._on_error(event)
        return None

    def after_forward(self, event: Event, sent_ns: int) -> Sequence[Action]:
        if not self._ticker:
            self._ticker = True
            return [Call(self._tick, hold=False), *self.after_forward(event, sent_ns)]
        if event.direction is U2C:
            t = event.type
            if t == "response.done":
                return self._on_response_done(event)
            if t == "conversation.item.input_audio_transcription.completed":
                self._on_transcription(event)
        return NOTHING

    def close(self, summary: SessionSummary) -> None:
        if self._closed:
            return
        self._closed = True
        for resp in self._responses.values():  # the session ended under these responses
            cost, tokens = E.abandoned_cost(self.prices, resp.input_bound, resp.out_ticks)
            self.tally.add(usd=usd_to_nano(cost), tokens=tokens)
            self.report.abandoned(cost, tokens)
        for item in self.meter.unfinalized_items():
            self.report.heard(self.meter.finalize_heard(item))
        amount = self._take_pending()
        self.report.audio(amount.ain, amount.aout)
        rids = list(self.tally.own)
        self.tally.own.clear()
        self._responses.clear()
        self._creates.clear()
        summary.usage = self.report.summary(
            self.meter, self.tally.session, self.enforcer.exhausted, self.admission.degraded
        )
        self.service.finish(self.admission, amount, rids)

    @property
    def session_used(self) -> Amounts:
        """This session's usage so far (written to the ledger or not)."""
        return self.tally.session

    def drain_audit(self) -> Sequence[AuditRecord]:
        return self.enforcer.drain_audit()

    # -- client events -----------------------------------------------------------------------

    def _on_append(self, event: Event) -> Sequence[Action] | None:
        audio = event.payload().get("audio")
        if not isinstance(audio, str):
            return None
        ticks = self.meter.add_input_bytes(b64_decoded_len(audio))
        t = self.tally
        t.p_ain += ticks
        t.s_ain += ticks
        if self._in_limits:
            self._audio_room -= ticks
            if self._audio_room <= 0:
                return self._check_audio(self._in_limits)
        return None

    def _on_truncate(self, event: Event) -> None:
        p = event.payload()
        item, end_ms = p.get("item_id"), p.get("audio_end_ms")
        if isinstance(item, str) and isinstance(end_ms, int) and not isinstance(end_ms, bool):
            self.meter.truncate(item, end_ms)
            self.report.heard(self.meter.finalize_heard(item))

    def _on_response_create(self, event: Event) -> Sequence[Action] | None:
        if self.enforcer.closing:
            return NOTHING
        self._growth_chars += len(event.text)
        if not self._limits:
            return None
        body = event.payload().get("response")
        cap = None
        if isinstance(body, dict):
            cap = output_cap(body.get("max_output_tokens")) or output_cap(
                body.get("max_response_output_tokens")
            )
        amount = self._bound(cap)
        event_id = event.payload().get("event_id")
        client_event_id = event_id if isinstance(event_id, str) else None
        if self.enforcer.exhausted is not None:
            return self.enforcer.refuse(self.enforcer.exhausted, amount, client_event_id, self._in_flight())
        lim = self.enforcer.local_failure(amount)
        if lim is not None:
            return self.enforcer.refuse(lim, amount, client_event_id, self._in_flight())
        rid = self._next_rid()

        async def reserve() -> Sequence[Action]:
            failed = await self._reserve(rid, amount)
            if self._stopped():
                await self.service.release(self.admission, rid)
                return NOTHING
            if failed is not None:
                return self.enforcer.refuse(failed, amount, client_event_id, self._in_flight())
            self._creates.append((rid, client_event_id))
            return (Send(C2U, event.text, event),)

        return (Call(reserve, hold=True),)

    # -- upstream events ---------------------------------------------------------------------

    def _on_audio_delta(self, event: Event) -> Sequence[Action] | None:
        text = event.text
        span = string_span(text, "delta")
        ids = string_span(text, "item_id")
        if span is None or ids is None:
            p = event.payload()
            delta, item = p.get("delta"), p.get("item_id")
            if not isinstance(delta, str):
                return None
            nbytes, item_id = b64_decoded_len(delta), item if isinstance(item, str) else ""
        else:
            nbytes, item_id = b64_len_in(text, span[0], span[1]), text[ids[0] : ids[1]]
        ticks = self.meter.add_output_bytes(item_id, nbytes)
        t = self.tally
        t.p_aout += ticks
        t.s_aout += ticks
        response_id = self._item_response.get(item_id)
        if response_id is not None:
            resp = self._responses.get(response_id)
            if resp is not None:
                resp.out_ticks += ticks
        if self._out_limits:
            self._audio_room -= ticks
            if self._audio_room <= 0:
                return self._check_audio(self._out_limits)
        return None

    def _on_item_added(self, event: Event) -> None:
        p = event.payload()
        item, rid = p.get("item"), p.get("response_id")
        if isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(rid, str):
            self._item_response[item["id"]] = rid

    def _on_response_created(self, event: Event) -> Sequence[Action] | None:
        body = event.payload().get("response")
        body = body if isinstance(body, dict) else {}
        response_id = str(body.get("id", ""))
        bound_in = self._input_bound()
        if self._creates:
            rid, _ = self._creates.popleft()
            self._responses[response_id] = _Response(rid, bound_in)
            return None
        if not self._limits:
            self._responses[response_id] = _Response("", bound_in)
            return None
        # A response nobody asked the relay for: server VAD started it. Pay before it is shown.
        amount = self._bound(output_cap(body.get("max_output_tokens")))
        lim = self.enforcer.exhausted or self.enforcer.local_failure(amount)
        if lim is not None:
            return self._refuse_auto(lim, amount, response_id, bound_in)
        rid = self._next_rid()

        async def reserve() -> Sequence[Action]:
            failed = await self._reserve(rid, amount)
            if self._stopped():
                await self.service.release(self.admission, rid)
                return NOTHING
            if failed is not None:
                return self._refuse_auto(failed, amount, response_id, bound_in)
            self._responses[response_id] = _Response(rid, bound_in)
            return (Send(U2C, event.text, event),)

        return (Call(reserve, hold=True),)

    def _refuse_auto(
        self, lim: Limit, amount: Amounts, response_id: str, bound_in: E.InputBound
    ) -> Sequence[Action]:
        actions = self.enforcer.refuse(lim, amount, None, self._in_flight(), cancel=response_id)
        # It started upstream (its input was processed): ``close`` bills it like any response cut off.
        self._responses[response_id] = _Response("", bound_in)
        return actions

    def _on_error(self, event: Event) -> Sequence[Action] | None:
        err = event.payload().get("error")
        cause = err.get("event_id") if isinstance(err, dict) else None
        if not cause:
            return None
        for i, (rid, event_id) in enumerate(self._creates):
            if event_id == cause:  # upstream refused that response.create: nothing will start
                del self._creates[i]
                self.tally.own.pop(rid, None)

                async def release(rid: str = rid) -> Sequence[Action]:
                    await self.service.release(self.admission, rid)
                    return NOTHING

                return (Send(U2C, event.text, event), Call(release, hold=False))
        return None

    def _on_response_done(self, event: Event) -> Sequence[Action]:
        body = event.payload().get("response")
        body = body if isinstance(body, dict) else {}
        usage = TokenUsage.parse(body.get("usage"))
        cost = response_cost(self.prices, usage)
        self.tally.add(usd=usd_to_nano(cost), tokens=usage.total)
        self.report.response(str(body.get("status", "")), usage, cost)
        self._context = (
            usage.input_text + usage.input_text_cached + usage.output_text,
            usage.input_audio + usage.input_audio_cached + usage.output_audio,
            usage.input_image + usage.input_image_cached + usage.input_other + usage.output_other,
        )
        self._growth_chars = 0
        self._in_ticks_mark = self.meter.in_ticks
        resp = self._responses.pop(str(body.get("id", "")), None)
        rid = resp.rid if resp is not None else ""
        if not rid and not self._limits and not self._due():
            return NOTHING

        async def settle() -> Sequence[Action]:
            return await self._flush(rid)

        return (Call(settle, hold=False),)

    def _on_transcription(self, event: Event) -> None:
        prices = self.service.pricing.transcription(self.meter.config.transcription_model)
        cost, kinds = transcription_cost(prices, event.payload().get("usage"))
        tokens = sum(kinds.values())
        self.tally.add(usd=usd_to_nano(cost), tokens=tokens)
        self.report.transcription(prices.name, kinds, cost)

    # -- enforcement -------------------------------------------------------------------------

    def _bound(self, response_cap: int | None) -> Amounts:
        cap = E.output_cap(
            self.prices,
            response_cap,
            self.meter.config.max_output_tokens,
            self.spec,
            self.service.pricing.reserve_output_tokens,
        )
        return E.response_bound(self.prices, self._input_bound(), cap)

    def _input_bound(self) -> E.InputBound:
        audio = -(-(self.meter.in_ticks - self._in_ticks_mark) // E.INPUT_TICKS_PER_TOKEN)
        text, old_audio, other = self._context
        if not (text or old_audio or other):
            text = self.meter.config.instructions_chars
        return E.input_bound(self.prices, text + self._growth_chars, old_audio + audio, other)

    # -- ledger (async, in thunks) -----------------------------------------------------------

    async def _reserve(self, rid: str, amount: Amounts) -> Limit | None:
        if not self._checks:  # per-session budgets only: nothing shared to ask the ledger about
            self.tally.own[rid] = amount
            return None
        if self.tally.has_pending:
            await self._flush("")
        outcome = await self.service.reserve(self.admission, rid, amount, self._checks)
        if outcome.view is not None:
            self.tally.learn(outcome.view.used, outcome.window_ids)
            self.tally.known_reserved = outcome.view.reserved
            self._audio_room = 0  # others' audio may have moved the windows: check on the next event
        if outcome.failed is not None:
            return outcome.failed
        if outcome.view is None:  # the store is unavailable: decide on what this replica knows
            lim = self.enforcer.local_failure(amount)
            if lim is not None:
                return lim
        self.tally.own[rid] = amount
        return None

    async def _flush(self, rid: str) -> Sequence[Action]:
        amount = self._take_pending()
        self.report.audio(amount.ain, amount.aout)
        if rid:
            self.tally.own.pop(rid, None)
        if not amount and not rid:
            return self.enforcer.after_commit(amount, None, self._in_flight())
        used, ids = await self.service.commit(self.admission, rid, amount)
        if used is None:
            self.tally.assume_written(amount)
        else:
            self.tally.learn(used, ids)
        self._audio_room = 0
        return self.enforcer.after_commit(amount, used, self._in_flight())

    async def _tick(self) -> Sequence[Action]:
        svc, spec = self.service, self.spec
        idle = spec.idle_timeout_seconds if spec else None
        longest = spec.max_session_seconds if spec else None
        idle_ns = int(idle * 1e9) if idle else 0
        max_ns = int(longest * 1e9) if longest else 0
        flush_ns = int(svc.flush_seconds * 1e9)
        while not self._stopped():
            await asyncio.sleep(svc.tick_seconds)
            if self._stopped():
                break
            now = svc.mono_ns()
            if idle_ns and now - self._last_client_ns >= idle_ns:
                self.enforcer.closing = True
                text = f"The session was idle for {idle:g} s (idle_timeout_seconds)."
                return (
                    synth(U2C, error_event("idle_timeout", text)),
                    Close(1000, "idle timeout", "idle_timeout"),
                )
            if max_ns and now - self._start_ns >= max_ns:
                self.enforcer.closing = True
                text = f"The session reached its maximum length of {longest:g} s (max_session_seconds)."
                error = synth(U2C, error_event("session_length_exceeded", text))
                return (error, Close(1008, "maximum session length", "budget"))
            if now - self._last_flush_ns >= flush_ns:
                self._last_flush_ns = now
                if self.tally.has_pending:
                    actions = await self._flush("")
                    if actions:
                        return actions
        return NOTHING

    # -- bookkeeping -------------------------------------------------------------------------

    def _check_audio(self, limits: tuple[Limit, ...]) -> Sequence[Action] | None:
        actions = self.enforcer.check_audio(limits, self._in_flight())
        self._audio_room = self.enforcer.audio_room(self._audio_limits)
        return actions

    def _in_flight(self) -> bool:
        return bool(self._responses or self._creates)

    def _stopped(self) -> bool:
        return self._closed or self.enforcer.closing

    def _due(self) -> bool:
        return self.service.mono_ns() - self._last_flush_ns >= int(self.service.flush_seconds * 1e9)

    def _take_pending(self) -> Amounts:
        self._last_flush_ns = self.service.mono_ns()
        return self.tally.take_pending()

    def _next_rid(self) -> str:
        self._n += 1
        return f"{self.info.session_id}:{self._n}"


_CONTEXT_EVENTS = frozenset({"conversation.item.create", "session.update", "transcription_session.update"})
_SESSION_EVENTS = frozenset({"session.created", "session.updated", "transcription_session.updated"})
