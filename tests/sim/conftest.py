"""Fixtures for the simulator suite: one server for the session, reset between tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from relay.sim import Faults, SimConfig, SimServer

API_KEY = "sim-test-key"
FAST_PACE = 0.02


@pytest.fixture(scope="session")
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(api_key=API_KEY, pace=FAST_PACE)) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_sim(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sim" in request.fixturenames:
        server: SimServer = request.getfixturevalue("sim")
        server.faults.reset()
        server.transcripts.clear()
        server.config.pace = FAST_PACE
        server.config.fixed_reply = None
        assert server.faults == Faults()
