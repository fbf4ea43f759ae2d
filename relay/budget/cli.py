"""``relay usage --tenant T``: ask a running relay's admin listener what a tenant used and has left.

Rules of this module:
- Read-only: one ``GET /v1/relay/usage?tenant=T`` against ``--admin`` (default: ``admin_listen``
  from the configuration, a wildcard host becoming 127.0.0.1). The relay answers from the shared
  ledger, so any replica gives the tenant-wide figures.
- Exit status: 0 answered, 1 the relay could not be reached or refused (unknown tenant, store
  down), 2 a configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from relay.config import load_config, split_hostport
from relay.errors import ConfigError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "usage", help="show a tenant's usage and remaining budgets (from a running relay)"
    )
    p.add_argument("--tenant", "-t", required=True, help="tenant name")
    p.add_argument("--admin", help="admin URL of a running relay (default: http://<admin_listen>)")
    p.add_argument("--config", "-c", help="relay.yaml, for the default admin address")
    p.add_argument("--json", action="store_true", help="print the endpoint's JSON as it is")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the relay (default 5)")
    p.set_defaults(func=cmd_usage)


def admin_url(args: argparse.Namespace) -> str:
    if args.admin:
        return str(args.admin).rstrip("/")
    cfg = load_config(args.config)
    host, port = split_hostport(cfg.admin_listen, key="admin_listen")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def cmd_usage(args: argparse.Namespace) -> int:
    try:
        base = admin_url(args)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    url = f"{base}/v1/relay/usage?{urllib.parse.urlencode({'tenant': args.tenant})}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:  # noqa: S310 - an http(s) URL we built
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        print(f"relay usage: {url}: HTTP {exc.code}: {_message(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"relay usage: cannot query {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(render(body))
    return 0


def render(body: dict[str, Any]) -> str:
    """The usage report as a small table."""
    lines = [
        f"tenant {body.get('tenant')}  (store: {body.get('store')}"
        f"{'' if body.get('store_available', True) else ', UNAVAILABLE'}, as of {body.get('as_of')})"
    ]
    rows = [("BUDGET", "METRIC", "PER", "USED", "LIMIT", "REMAINING", "USED%", "RESETS AT")]
    for b in body.get("budgets", []):
        if b.get("per") == "session":
            sessions = b.get("sessions_here", [])
            top = max((s.get("used", 0) for s in sessions), default=None)
            rows.append(
                (b["name"], b["metric"], "session", _num(top), _num(b["limit"]), "-", "-",
                 f"per session ({len(sessions)} live here)")
            )  # fmt: skip
            continue
        rows.append(
            (
                b["name"],
                b["metric"],
                b["per"],
                _num(b["used"]),
                _num(b["limit"]),
                _num(b["remaining"]),
                f"{100 * b['used_ratio']:.1f}%",
                b["window"]["resets_at"],
            )
        )
    if len(rows) == 1:
        lines.append("no budgets")
    else:
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    conc = body.get("concurrent_sessions") or {}
    if conc.get("limit") is not None:
        lines.append(f"concurrent sessions: {conc.get('active')} of {conc.get('limit')}")
    day = (body.get("windows") or {}).get("day")
    if day:
        lines.append(
            f"today ({day['id']}): {_num(day['usd'])} USD, {day['tokens']} tokens, "
            f"{_num(day['audio_seconds_in'])} s in, {_num(day['audio_seconds_out'])} s out"
        )
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason if isinstance(exc.reason, str) else ""
