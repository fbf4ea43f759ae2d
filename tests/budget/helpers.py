"""Builders for the budget tests: events in both directions, a service on a fake clock, and a
tiny driver that carries out a guard's actions the way the pumps do (holds awaited in order)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from relay.actions import Action, Call, Close, Send
from relay.budget.ledger import LedgerStore, MemoryLedger
from relay.budget.pricing import Pricing
from relay.budget.service import BudgetService
from relay.budget.spec import BudgetSpec, parse_budgets
from relay.config import BudgetsConfig
from relay.contracts import SessionInfo
from relay.events import Dialect, Event, parse_client_frame, parse_upstream_frame
from relay.metrics import RelayMetrics

_seq = [0]


def client(etype: str, **fields: Any) -> Event:
    _seq[0] += 1
    return parse_client_frame(orjson.dumps({"type": etype, **fields}).decode(), _seq[0], 0)


def upstream(etype: str, **fields: Any) -> Event:
    _seq[0] += 1
    return parse_upstream_frame(
        orjson.dumps({"type": etype, "event_id": f"event_{_seq[0]}", **fields}).decode(), _seq[0], 0
    )


def b64(nbytes: int) -> str:
    return base64.b64encode(b"\x01" * nbytes).decode()


def append(nbytes: int) -> Event:
    return client("input_audio_buffer.append", audio=b64(nbytes))


def audio_delta(
    nbytes: int, item_id: str = "item_1", response_id: str = "resp_1", beta: bool = False
) -> Event:
    etype = "response.audio.delta" if beta else "response.output_audio.delta"
    return upstream(
        etype, response_id=response_id, item_id=item_id, output_index=0, content_index=0, delta=b64(nbytes)
    )


def response_created(response_id: str = "resp_1", **extra: Any) -> Event:
    return upstream(
        "response.created",
        response={
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "usage": None,
            **extra,
        },
    )


def response_done(
    response_id: str = "resp_1", status: str = "completed", usage: dict[str, Any] | None = None
) -> Event:
    return upstream(
        "response.done",
        response={"id": response_id, "object": "realtime.response", "status": status, "usage": usage},
    )


def usage(
    text_in: int = 0,
    audio_in: int = 0,
    cached_text: int = 0,
    cached_audio: int = 0,
    text_out: int = 0,
    audio_out: int = 0,
) -> dict[str, Any]:
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "image_tokens": 0,
            "cached_tokens": cached_text + cached_audio,
            "cached_tokens_details": {
                "text_tokens": cached_text,
                "audio_tokens": cached_audio,
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


class Clock:
    """Wall and monotonic time the test moves by hand."""

    def __init__(self, wall: float = 1_795_000_000.0) -> None:
        self.t = wall
        self.mono = 1_000_000_000_000

    def wall(self) -> float:
        return self.t

    def mono_ns(self) -> int:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.mono += int(seconds * 1e9)


def spec(**node: Any) -> BudgetSpec:
    return parse_budgets(node, "budgets")


def info(session_id: str = "rs_1", tenant: str = "acme", model: str = "gpt-realtime-2") -> SessionInfo:
    return SessionInfo(session_id=session_id, tenant=tenant, key_id="k", model=model, dialect=Dialect.GA)


def service(
    store: LedgerStore | None = None,
    *,
    clock: Clock | None = None,
    cfg: BudgetsConfig | None = None,
    metrics: RelayMetrics | None = None,
    **options: Any,
) -> BudgetService:
    clock = clock or Clock()
    return BudgetService(
        cfg or BudgetsConfig(),
        metrics or RelayMetrics(CollectorRegistry()),
        Pricing.load(),
        store or MemoryLedger(wall=clock.wall),
        wall=clock.wall,
        mono_ns=clock.mono_ns,
        **options,
    )


class Driver:
    """Carry out actions like the pumps: Sends are collected, holds awaited, background Calls
    awaited too (except the ticker, which a test runs on its own with ``tick``)."""

    def __init__(self, guard: Any) -> None:
        self.guard = guard
        self.sent: list[Send] = []
        self.closed: Close | None = None
        self.ticker: Call | None = None

    async def feed(self, event: Event) -> list[Action]:
        held = self.guard.before_forward(event)
        if held is None:
            held = [Send(event.direction, event.text, event)]
        return await self.run(held)

    async def run(self, actions: Sequence[Action]) -> list[Action]:
        done: list[Action] = []
        for action in actions:
            done.append(action)
            if isinstance(action, Send):
                self.sent.append(action)
                if action.event is not None:
                    done.extend(await self.run(self.guard.after_forward(action.event, 0)))
            elif isinstance(action, Close):
                if self.closed is None:
                    self.closed = action
            elif isinstance(action, Call):
                if getattr(action.thunk, "__name__", "") == "_tick":
                    self.ticker = action
                    continue
                done.extend(await self.run(await action.thunk()))
        return done

    def types_sent(self) -> list[str]:
        return [s.event.type if s.event is not None else "?" for s in self.sent]

    def errors(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(s.text)["error"]
            for s in self.sent
            if s.event is not None and s.event.type == "error"
        ]
