"""Fixtures for the core relay's functional tests: a simulator and a relay in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.sim import SimConfig, SimServer
from tests.support.relay import RunningRelay, running_relay

SIM_KEY = "sk-sim-upstream-key-never-shown"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(api_key=SIM_KEY)) as server:
        yield server


@pytest.fixture
async def relay(tmp_path: Path, sim: SimServer) -> AsyncIterator[RunningRelay]:
    async with running_relay(tmp_path, upstream=sim) as running:
        yield running
