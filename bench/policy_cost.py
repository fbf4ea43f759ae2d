"""What the policy chain costs per event, by event type (micro-benchmark, no sockets).

Run: ``.venv/bin/python -m bench.policy_cost [--n 20000]``.

For each event type it times what the session core does per event with a realistic policy set
(every detector on upstream, client and recording; a tool allow-list with an argument schema;
lock-down; the model allow-list; an event deny-list) against the same frames with no policies:
building the ``Event`` from the wire text, ``wants()``, ``apply()`` when wanted, and
``recording_events()``. The difference is the policy engine's cost. Audio events must show none.
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Callable
from typing import Any

import orjson

from relay.contracts import SessionInfo
from relay.events import Dialect, Event, parse_client_frame, parse_upstream_frame
from relay.policy.base import policy_class
from relay.policy.chain import PolicyChain
from relay.verdicts import AuditRecord

REALISTIC: list[dict[str, Any]] = [
    {"use": "models", "with": {"allow": ["gpt-realtime*"]}},
    {"use": "events", "with": {"deny": {"client_to_upstream": ["conversation.item.retrieve"]}}},
    {
        "use": "lockdown",
        "with": {
            "instructions": {"text": "You are a helpful agent.", "mode": "prepend"},
            "hide_instructions": True,
            "voices": ["marin", "cedar"],
            "max_output_tokens": 1024,
            "locked": ["tracing"],
        },
    },
    {
        "use": "tools",
        "with": {
            "allow": [
                "get_weather",
                {"name": "lookup_order", "arguments": {"type": "object", "required": ["id"]}},
            ]
        },
    },
    {
        "use": "redact",
        "id": "pii",
        "with": {
            "detectors": ["all"],
            "custom": [{"label": "order", "pattern": "ORD-[0-9]{6}"}],
            "targets": ["upstream", "client", "recording"],
        },
    },
]

AUDIO_20MS = base64.b64encode(b"\x01\x02" * 480).decode()
AUDIO_100MS = base64.b64encode(b"\x01\x02" * 2400).decode()

FRAMES: list[tuple[str, bool, dict[str, Any]]] = [
    ("input_audio_buffer.append (20 ms)", True, {"type": "input_audio_buffer.append", "audio": AUDIO_20MS}),
    (
        "response.output_audio.delta (100 ms)",
        False,
        {
            "type": "response.output_audio.delta",
            "event_id": "event_x",
            "response_id": "resp_1",
            "item_id": "item_1",
            "output_index": 0,
            "content_index": 0,
            "delta": AUDIO_100MS,
        },
    ),
    (
        "response.output_audio_transcript.delta",
        False,
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": "event_y",
            "response_id": "resp_1",
            "item_id": "item_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Sure, your order ",
        },
    ),
    (
        "conversation.item.create (text)",
        True,
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "My email is ann@example.com, order ORD-123456."}],
            },
        },
    ),
    (
        "session.update",
        True,
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            },
        },
    ),
]


def build(entries: list[dict[str, Any]]) -> PolicyChain:
    policies = []
    for i, e in enumerate(entries):
        cls = policy_class(e["use"])
        assert cls is not None
        policies.append(cls.from_spec(e.get("id", e["use"]), e.get("with") or {}, f"policies[{i}].with"))
    info = SessionInfo("bench", "bench", "k", "gpt-realtime", Dialect.GA)
    return PolicyChain(policies, info, None)


def per_event_ns(steps: list[Callable[[], object]], n: int, rounds: int = 7) -> list[float]:
    """Best time per call of each step; rounds alternate between the steps so that a noisy
    neighbour slows them alike."""
    for step in steps:
        for _ in range(min(n, 2000)):
            step()
    best = [float("inf")] * len(steps)
    for _ in range(rounds):
        for i, step in enumerate(steps):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                step()
            best[i] = min(best[i], (time.perf_counter_ns() - t0) / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="events per timing round")
    args = parser.parse_args()
    chain = build(REALISTIC)
    audit: list[AuditRecord] = []
    print(
        f"{'event type':42} {'no policy':>10} {'policies':>10} {'added':>10}   (ns per event, best of 7 alternating rounds)"
    )
    for label, client, payload in FRAMES:
        text = orjson.dumps(payload).decode()
        parse: Callable[[str, int, int], Event] = parse_client_frame if client else parse_upstream_frame

        def bare(text: str = text, parse: Callable[[str, int, int], Event] = parse) -> object:
            return parse(text, 1, 0)

        def with_chain(text: str = text, parse: Callable[[str, int, int], Event] = parse) -> object:
            event = parse(text, 1, 0)
            if chain.wants(event.direction, event.type):
                audit.clear()
                verdict = chain.apply(event, audit)
                event = getattr(verdict, "event", None) or event
            return chain.recording_events(event)

        base, full = per_event_ns([bare, with_chain], args.n)
        print(f"{label:42} {base:10.0f} {full:10.0f} {full - base:10.0f}")
    chain.flush_recording()


if __name__ == "__main__":
    main()
