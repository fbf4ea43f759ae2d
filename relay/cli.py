"""The ``relay`` command: argument parsing and dispatch only; the work lives in the modules.

Subcommands: ``serve`` and ``keys`` here; ``sim``, ``policy``, ``usage``, ``export``, ``verify``
and ``erase`` are registered by their areas (``relay.<area>.cli.register``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

from relay import __version__
from relay.config import load_config
from relay.errors import ConfigError
from relay.keys import new_key_entry, valid_tenant_name
from relay.logs import configure_logging

_AREAS = ("relay.sim.cli", "relay.policy.cli", "relay.budget.cli", "relay.recording.cli")
log = logging.getLogger("relay")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Auditing relay for the OpenAI Realtime API.")
    parser.add_argument("--version", action="version", version=f"realtime-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--config", "-c", help="relay.yaml (default: built-in defaults + RELAY_* environment)")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage client keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = keys_sub.add_parser("new", help="make a key for a tenant; prints it once with the line to paste")
    new.add_argument("tenant")
    new.add_argument("--id", dest="key_id", help="key id (default: <tenant>-<random>)")
    new.set_defaults(func=cmd_keys_new)

    for module_name in _AREAS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        module.register(sub)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, cfg.log_format)
    try:
        return asyncio.run(_serve(cfg))
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2


async def _serve(cfg: object) -> int:
    from relay.server import Relay

    relay = Relay(cfg)  # type: ignore[arg-type]
    await relay.start()
    # Everything built at start lives as long as the process: keep it out of the collector's
    # generations, and collect young objects less often (per-event garbage is acyclic and is
    # freed by reference counting; the collector only finds cycles).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    watcher = getattr(relay, "_watcher", None)
    if watcher is not None and hasattr(watcher, "reload"):
        loop.add_signal_handler(signal.SIGHUP, watcher.reload)
    await stop.wait()
    log.info("signal received: draining")
    await relay.drain()
    await relay.stop()
    log.info("relay stopped")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    if not valid_tenant_name(args.tenant):
        print(
            f"relay: invalid tenant name {args.tenant!r} (lower-case letters, digits, - and _)",
            file=sys.stderr,
        )
        return 2
    key, key_id, line = new_key_entry(args.tenant, args.key_id)
    print(f"New key for tenant {args.tenant!r} (shown once; the relay stores only its SHA-256):\n")
    print(f"  {key}\n")
    print(f"Add this line under `keys:` in policies/tenants/{args.tenant}.yaml:\n")
    print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args))
