"""A protocol-faithful stand-in for the OpenAI Realtime API (GA and beta dialects).

Start one in-process with ``async with SimServer(SimConfig(api_key="k")) as sim:`` and point a
client at ``sim.url`` (``?model=...``) or the SDK at ``websocket_base_url=sim.base_url``.
See docs/simulator.md for what it models and what it does not.
"""

from relay.sim.config import Faults, SimConfig
from relay.sim.server import SimConnection, SimServer, start_embedded
from relay.sim.session import SimSession

__all__ = ["Faults", "SimConfig", "SimConnection", "SimServer", "SimSession", "start_embedded"]
