"""Simulator settings and switchable faults.

Rules of this module:
- ``SimConfig`` is read when a connection opens, except ``pace`` and ``delta_ms``-independent
  knobs documented as live (``pace``, ``fixed_reply``), which are read on every use so a test
  can change them on a running server.
- ``Faults`` is live: every field is read at the moment it matters (handshake, each response
  batch), so tests flip faults on and off between steps without restarting the server.
- ``api_key=None`` accepts any key or none (the demo and the relay's embedded default upstream);
  a set key must match exactly (Bearer header, ``api-key`` header, or the
  ``openai-insecure-api-key.<key>`` subprotocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    # Wall-clock seconds spent per second of reply audio: 0.1 streams ten times faster than real
    # time (OpenAI also streams ahead of playback); 1.0 is real time (benchmarks); 0 = no pacing.
    pace: float = 0.1
    delta_ms: int = 100
    voice_source: str = "espeak"  # "espeak" (tone fallback when missing) or "tone"
    fixed_reply: str | None = None  # every response says this (benchmarks, demos)
    transcripts: list[str] = field(default_factory=list)  # scripted "what the user said", in order
    cycle_transcripts: bool = False  # reuse the scripted list forever instead of consuming it
    max_session_seconds: float = 3600.0
    expiry_close_code: int = 1000
    # Keep every frame and every closed connection (tests). Off: no frame log, and closed
    # connections leave ``SimServer.connections`` (CLI, embedded upstream, benchmarks).
    record_frames: bool = True
    default_model: str = "gpt-realtime"
    tokens_per_minute: int = 40_000
    max_msg_size: int = 32 * 1024 * 1024


@dataclass
class Faults:
    """Faults a test can switch on; all default to off."""

    refuse_handshake: int | None = None  # answer the upgrade with this HTTP status
    refuse_body: dict[str, Any] | None = None  # JSON body for that answer (OpenAI-shaped default)
    close_mid_response: int | None = None  # close with this WebSocket code during a response
    # ... after this many batches of the response: batch 1 announces the output item, each later
    # batch is one delta (audio with its transcript words, or text, or arguments).
    close_after_batches: int = 2
    stall_seconds: float = 0.0  # stop sending this long after the first batch of each response
    send_error: str | None = None  # send an ``error`` (server_error) with this code after session.created
    fail_responses: bool = False  # every response ends at once with status "failed"
    slow_factor: float = 1.0  # multiply the pacing of response batches (answer slowly)
    handshake_delay: float = 0.0  # wait this long before answering the upgrade

    def reset(self) -> None:
        for name, value in Faults().__dict__.items():
            setattr(self, name, value)
