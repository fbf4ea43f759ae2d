"""``relay sim``: run the simulator as a standalone server until SIGINT/SIGTERM.

Rules of this module:
- ``register(subparsers)`` adds the ``sim`` subcommand; ``run(args)`` returns the exit code.
- Listens on 127.0.0.1:8090 unless told otherwise; prints one line with the URL when ready.
- Every fault and tuning knob that is a plain value is reachable from flags, so a demo or a
  shell-driven test can reproduce what the Python tests switch on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from relay.sim.config import Faults, SimConfig
from relay.sim.server import SimServer


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sim",
        help="run the OpenAI Realtime API simulator",
        description="A protocol-faithful stand-in for the OpenAI Realtime API (see docs/simulator.md).",
    )
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 8090), metavar="HOST:PORT")
    p.add_argument("--api-key", default=None, help="require this key (default: accept any key)")
    p.add_argument(
        "--transcripts", type=Path, help="file with one scripted user transcript per line (cycled)"
    )
    p.add_argument("--reply", default=None, help="say this in every response instead of the reply rule")
    p.add_argument("--pace", type=float, default=0.1, help="wall seconds per second of reply audio (0.1)")
    p.add_argument("--delta-ms", type=int, default=100, help="audio per delta event in ms (100)")
    p.add_argument("--voice-source", choices=("espeak", "tone"), default="espeak")
    p.add_argument("--max-session-seconds", type=float, default=3600.0)
    p.add_argument("--bench", action="store_true", help="benchmark mode: tones, real-time pace, no frame log")
    p.add_argument(
        "--refuse-handshake", type=int, metavar="STATUS", help="fault: answer upgrades with STATUS"
    )
    p.add_argument("--close-mid-response", type=int, metavar="CODE", help="fault: close during each response")
    p.add_argument("--stall-seconds", type=float, default=0.0, help="fault: stall each response this long")
    p.add_argument("--send-error", metavar="CODE", help="fault: send an error event after session.created")
    p.add_argument("--slow-factor", type=float, default=1.0, help="fault: multiply response pacing")
    p.set_defaults(func=run)


def build(args: argparse.Namespace) -> SimServer:
    host, port = args.listen
    transcripts: list[str] = []
    if args.transcripts:
        lines = args.transcripts.read_text(encoding="utf-8").splitlines()
        transcripts = [line.strip() for line in lines if line.strip()]
    config = SimConfig(
        host=host,
        port=port,
        api_key=args.api_key,
        pace=1.0 if args.bench else args.pace,
        delta_ms=args.delta_ms,
        voice_source="tone" if args.bench else args.voice_source,
        fixed_reply=args.reply
        or ("This is a benchmark reply of a few seconds of audio." if args.bench else None),
        transcripts=transcripts,
        cycle_transcripts=True,
        max_session_seconds=args.max_session_seconds,
        record_frames=False,
    )
    faults = Faults(
        refuse_handshake=args.refuse_handshake,
        close_mid_response=args.close_mid_response,
        stall_seconds=args.stall_seconds,
        send_error=args.send_error,
        slow_factor=args.slow_factor,
    )
    return SimServer(config, faults)


async def _main(args: argparse.Namespace) -> int:
    sim = build(args)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"relay sim listening on {sim.url}?model=gpt-realtime", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except OSError as exc:
        print(f"relay sim: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run ``sim`` without the top-level CLI: ``python -m relay.sim.cli --listen ...``."""
    parser = argparse.ArgumentParser(prog="relay")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["sim", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
