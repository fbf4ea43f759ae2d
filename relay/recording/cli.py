"""``relay export``, ``relay verify`` and ``relay erase``: the auditor's tools.

Rules of this module:
- Argument parsing, progress and exit codes only; the work is in ``relay.recording.audit`` and
  ``relay.recording.verify``. The sink comes from ``--config relay.yaml`` (``recording.*``, via
  ``relay.config.load_config``), credentials from the standard AWS chain.
- Exit codes: 0 success; 1 verification found problems (tampering) or erase refused; 2 usage,
  configuration or "not found" errors; 3 the sink failed.
- Progress goes to stderr (a bar on a terminal, one line per session otherwise); results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from relay import __version__
from relay.config import load_config
from relay.errors import ConfigError
from relay.recording import audit
from relay.recording.store import ObjectStore, StoreError
from relay.recording.verify import Report, verify_dir


def register(subparsers: Any) -> None:
    ex = subparsers.add_parser(
        "export", help="export recordings for an audit (audio, transcripts, event log)"
    )
    ex.add_argument("--session", help="one session id")
    ex.add_argument("--tenant", help="a tenant (with --since/--until), or a hint with --session")
    ex.add_argument("--since", help="start of the period (YYYY-MM-DD or ISO 8601 time, UTC), inclusive")
    ex.add_argument("--until", help="end of the period (a date includes that whole day), exclusive")
    ex.add_argument("--date", help="hint with --session: the session's date (YYYY-MM-DD)")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--config", "-c", help="relay.yaml (to find the recording sink)")
    ex.set_defaults(func=cmd_export)

    ve = subparsers.add_parser("verify", help="recompute every hash of a recording and report tampering")
    ve.add_argument("target", help="a session id (looked up in the sink) or a directory with manifest.json")
    ve.add_argument("--tenant", help="hint: the session's tenant")
    ve.add_argument("--date", help="hint: the session's date (YYYY-MM-DD)")
    ve.add_argument("--config", "-c", help="relay.yaml (to find the recording sink)")
    ve.set_defaults(func=cmd_verify)

    er = subparsers.add_parser("erase", help="erase a session's recording where retention allows")
    er.add_argument("--session", required=True, help="the session id")
    er.add_argument("--reason", default="privacy request", help="why (kept in the audit record)")
    er.add_argument("--requested-by", default="", help="who asked (default: the current user)")
    er.add_argument(
        "--bypass-governance",
        action="store_true",
        help="erase under GOVERNANCE retention (needs the permission)",
    )
    er.add_argument("--tenant", help="hint: the session's tenant")
    er.add_argument("--date", help="hint: the session's date (YYYY-MM-DD)")
    er.add_argument("--config", "-c", help="relay.yaml (to find the recording sink)")
    er.set_defaults(func=cmd_erase)


class Progress:
    """A one-line progress bar on a terminal; plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.bytes = 0
        self._last = 0.0

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.tty and time.monotonic() - self._last > 0.1:
            self._draw("")

    def step(self, label: str) -> None:
        self.done += 1
        if self.tty:
            self._draw(label)
        else:
            print(f"export {self.done}/{self.total} {label}", file=self.stream)

    def _draw(self, label: str) -> None:
        self._last = time.monotonic()
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        mb = self.bytes / 1e6
        print(
            f"\rexport [{bar}] {self.done}/{self.total} {mb:.1f} MB {label[:30]:<30}",
            end="",
            file=self.stream,
        )

    def finish(self) -> None:
        if self.tty:
            print(file=self.stream)


def _when(value: str, *, end: bool) -> dt.datetime:
    v = value.strip()
    if len(v) == 10:
        d = dt.datetime.fromisoformat(v).replace(tzinfo=dt.UTC)
        return d + dt.timedelta(days=1) if end else d
    t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _config(args: argparse.Namespace) -> Any:
    return load_config(args.config).recording


def cmd_export(args: argparse.Namespace) -> int:
    if bool(args.session) == bool(args.since or args.until):
        print("relay export: give --session ID, or --tenant T --since ... --until ...", file=sys.stderr)
        return 2
    if not args.session and not (args.tenant and args.since and args.until):
        print("relay export: --since and --until need --tenant", file=sys.stderr)
        return 2
    return _on_sink("export", args, _export)


def _on_sink(
    command: str,
    args: argparse.Namespace,
    body: Callable[[argparse.Namespace, ObjectStore, str], Awaitable[int]],
    *,
    store_hint: str = "",
) -> int:
    """Run ``body`` with the configured sink's store open; map failures to exit codes
    (2: configuration or arguments, 3: the sink failed)."""

    async def run(cfg: Any) -> int:
        store, prefix = await audit.open_store(cfg)
        try:
            return await body(args, store, prefix)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run(_config(args)))
    except ConfigError as exc:
        print(f"relay {command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"relay {command}: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"relay {command}: the recording sink failed: {exc}{store_hint}", file=sys.stderr)
        return 3


async def _export(args: argparse.Namespace, store: ObjectStore, prefix: str) -> int:
    out = Path(args.out)
    if args.session:
        loc = await audit.find_session(store, prefix, args.session, tenant=args.tenant, date=args.date)
        if loc is None:
            print(f"relay export: session {args.session} not found in the sink", file=sys.stderr)
            return 2
        locs = [loc]
    else:
        since, until = _when(args.since, end=False), _when(args.until, end=True)
        locs = await audit.sessions_between(store, prefix, args.tenant, since, until)
    progress = Progress(len(locs))
    for loc in locs:
        target = out if args.session else out / loc.session_id
        await audit.export_session(store, loc, target, progress.add_bytes)
        progress.step(loc.session_id)
        print(target)
    progress.finish()
    if not locs:
        print("relay export: no recordings in that period", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.is_dir():
        return _print_report(str(target), verify_dir(target))
    return _on_sink("verify", args, _verify_session)


async def _verify_session(args: argparse.Namespace, store: ObjectStore, prefix: str) -> int:
    loc = await audit.find_session(store, prefix, args.target, tenant=args.tenant, date=args.date)
    if loc is None:
        print(
            f"relay verify: {args.target} is neither a directory nor a session in the sink",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="relay-verify-") as tmp:
        await audit.fetch(store, loc, Path(tmp))
        report = await asyncio.to_thread(verify_dir, Path(tmp))
    return _print_report(loc.folder, report)


def _print_report(what: str, report: Report) -> int:
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(
            f"OK {what}: manifest, objects, {report.lines} chained events and "
            f"{report.refs_checked} audio references verified"
        )
        return 0
    print(f"TAMPERED {what}: {len(report.problems)} problem(s)")
    for p in report.problems:
        print(f"  - {p}")
    return 1


def cmd_erase(args: argparse.Namespace) -> int:
    return _on_sink("erase", args, _erase, store_hint=" (the audit record says pending; retry)")


async def _erase(args: argparse.Namespace, store: ObjectStore, prefix: str) -> int:
    loc = await audit.find_session(store, prefix, args.session, tenant=args.tenant, date=args.date)
    if loc is None:
        print(f"relay erase: session {args.session} not found in the sink", file=sys.stderr)
        return 2
    try:
        record = await audit.erase(
            store,
            loc,
            reason=args.reason,
            requested_by=args.requested_by,
            bypass_governance=args.bypass_governance,
            relay_version=__version__,
        )
    except audit.EraseRefused as exc:
        print(f"relay erase: refused: {exc}", file=sys.stderr)
        return 1
    print(f"erased {len(record['deleted'])} object version(s) of {loc.folder}")
    print(f"audit record: {loc.erasure_key}")
    return 0
