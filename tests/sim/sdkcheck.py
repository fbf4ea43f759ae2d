"""Strict checks that what the simulator sent parses as the SDK's own event models."""

from __future__ import annotations

import asyncio
import typing
from typing import Any

from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent as GaServerEvent
from pydantic import BaseModel, TypeAdapter

GA_ADAPTER: TypeAdapter[Any] = TypeAdapter(GaServerEvent)
BETA_ADAPTER: TypeAdapter[Any] = TypeAdapter(BetaServerEvent)


def _members(union: Any) -> set[type]:
    inner = typing.get_args(union)[0]
    return set(typing.get_args(inner))


GA_MODELS = _members(GaServerEvent)
BETA_MODELS = _members(BetaServerEvent)


def validate_frames(frames: list[str], beta: bool) -> list[Any]:
    """Validate every raw frame with the dialect's discriminated union (raises on any problem)."""
    adapter = BETA_ADAPTER if beta else GA_ADAPTER
    return [adapter.validate_json(f) for f in frames]


def assert_typed(event: Any, beta: bool) -> None:
    models = BETA_MODELS if beta else GA_MODELS
    assert isinstance(event, BaseModel) and type(event) in models, f"untyped event {event!r}"


async def recv_until(conn: Any, etype: str, beta: bool, within: float = 15.0) -> list[Any]:
    """Receive typed events up to and including the first of type ``etype``."""
    out: list[Any] = []
    async with asyncio.timeout(within):
        while True:
            ev = await conn.recv()
            assert_typed(ev, beta)
            out.append(ev)
            if ev.type == etype:
                return out


def types_of(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def without_deltas(types: list[str]) -> list[str]:
    return [t for t in types if not t.endswith(".delta")]
