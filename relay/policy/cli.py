"""``relay policy check`` and ``relay policy explain``.

- ``relay policy check [DIR]``: load every file the relay would load; print one line per problem
  (``file:line: key.path: message``) and exit 1, or print a summary and exit 0.
- ``relay policy explain --tenant T [--dir DIR]``: print the tenant's effective merged policy as
  YAML (key hashes shortened), with the version the relay would report for it.
- ``relay policy schema [--write]``: check (or refresh) ``policy.schema.json`` and its copy in
  ``policies/`` against the section fragments their subsystems publish.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from relay.errors import PolicyConfigError
from relay.policy import schema
from relay.policy.errors import PolicyLoadErrors
from relay.policy.store import PolicyStore

DEFAULT_DIR = "policies"


def register(subparsers: Any) -> None:
    """Add ``policy check`` and ``policy explain`` to the ``relay`` command."""
    parser = subparsers.add_parser("policy", help="check and explain policy files")
    sub = parser.add_subparsers(dest="policy_command", required=True)
    check = sub.add_parser("check", help="validate every policy file; non-zero exit on any error")
    check.add_argument("dir", nargs="?", default=DEFAULT_DIR, help="policy directory (default: policies)")
    check.set_defaults(func=cmd_check)
    explain = sub.add_parser("explain", help="print a tenant's effective merged policy")
    explain.add_argument("--tenant", required=True)
    explain.add_argument("--dir", default=DEFAULT_DIR, help="policy directory (default: policies)")
    explain.set_defaults(func=cmd_explain)
    sch = sub.add_parser("schema", help="check or update policy.schema.json (for developers)")
    sch.add_argument("--write", action="store_true", help="update the schema files")
    sch.add_argument("--copy", default=f"{DEFAULT_DIR}/policy.schema.json", help="the published copy")
    sch.set_defaults(func=cmd_schema)


def _problems(exc: PolicyConfigError) -> list[PolicyConfigError]:
    return list(exc.errors) if isinstance(exc, PolicyLoadErrors) else [exc]


def _load(directory: str) -> PolicyStore | None:
    try:
        return PolicyStore.load(directory)
    except PolicyConfigError as exc:
        problems = _problems(exc)
        for p in problems:
            print(_format(p), file=sys.stderr)
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {directory}", file=sys.stderr)
        return None


def _format(p: PolicyConfigError) -> str:
    where = f"{p.file}:{p.line}" if p.line else p.file
    return f"{where}: {p.key}: {p.message}" if p.key else f"{where}: {p.message}"


def cmd_check(args: argparse.Namespace) -> int:
    store = _load(args.dir)
    if store is None:
        return 1
    names = ", ".join(store.tenants) or "none"
    print(f"ok: {args.dir} version {store.version}; tenants: {names}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    store = _load(args.dir)
    if store is None:
        return 1
    try:
        tenant = store.tenant(args.tenant)
    except KeyError:
        print(
            f"unknown tenant {args.tenant!r} (tenants: {', '.join(store.tenants) or 'none'})", file=sys.stderr
        )
        return 2
    sys.stdout.write(yaml.safe_dump(tenant.effective(), sort_keys=False, allow_unicode=True, width=100))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    stale = schema.sync(Path(args.copy), write=args.write)
    for p in stale:
        print(f"wrote {p}" if args.write else f"{p} is out of date: run relay policy schema --write")
    return 0 if args.write or not stale else 1


def main(argv: list[str] | None = None) -> int:
    """Run the policy commands on their own (``python -m relay.policy.cli check``)."""
    parser = argparse.ArgumentParser(prog="relay")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
