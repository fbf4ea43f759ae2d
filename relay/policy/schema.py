"""Validate a policy file against the published JSON Schema (``policy.schema.json``).

The schema checks shape and names (what an editor can check too); each policy's ``from_spec``
then checks meaning (regexes compile, globs, ...). Every error names file, line and key path.

The ``budgets`` and ``recording`` parts of the schema belong to their subsystems, which publish
them as fragments (``SECTION_SCHEMAS``). ``relay policy schema --write`` copies the fragments
into ``policy.schema.json`` and refreshes the copy in ``policies/``; ``--check`` fails when either
file is out of date (the tests check it).
"""

from __future__ import annotations

import functools
import importlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from relay.errors import PolicyConfigError
from relay.policy.source import SourceDoc, join

SCHEMA_FILE = "policy.schema.json"
MAX_ERRORS_PER_FILE = 50
SECTION_SCHEMAS = {
    "budgets": "relay.budget.spec:BUDGETS_SCHEMA",
    "recording": "relay.recording.retention:RECORDING_SCHEMA",
}


@functools.cache
def schema() -> dict[str, Any]:
    """The policy file JSON Schema, as shipped in the package."""
    text = resources.files("relay.policy").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    validator: jsonschema.protocols.Validator = cls(schema())
    return validator


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out = join(out, p if isinstance(p, int) else str(p))
    return out


def _explain(err: ValidationError) -> tuple[str, str]:
    """Key path and message for one schema error, pointed at the most precise key."""
    if err.context:
        err = best_match(err.context)
    path = _path(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        if extra:
            names = ", ".join(sorted(allowed))
            return join(path, extra[0]), f"unknown key {extra[0]!r} (allowed here: {names})"
    if err.validator == "enum":
        return path, f"{err.instance!r} is not one of {', '.join(map(repr, err.validator_value))}"
    if err.validator == "const":
        return path, f"must be {err.validator_value!r}"
    return path, err.message


def validate(doc: SourceDoc) -> list[PolicyConfigError]:
    """Every schema violation in ``doc``, in file order (at most ``MAX_ERRORS_PER_FILE``)."""
    found: list[tuple[int, str, str]] = []
    for err in _validator().iter_errors(doc.data):
        path, message = _explain(err)
        found.append((doc.line_of(path) or 0, path, message))
        if len(found) >= MAX_ERRORS_PER_FILE:
            break
    found.sort()
    seen: set[tuple[str, str]] = set()
    out: list[PolicyConfigError] = []
    for line, path, message in found:
        if (path, message) in seen:
            continue
        seen.add((path, message))
        out.append(PolicyConfigError(doc.file, line or None, path, message))
    return out


def build(current: dict[str, Any]) -> dict[str, Any]:
    """``current`` with each section's schema replaced by its owner's fragment (when it exists)."""
    out: dict[str, Any] = json.loads(json.dumps(current))
    for name, target in SECTION_SCHEMAS.items():
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        out["properties"][name] = getattr(module, attr)
    return out


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def sync(copy: Path, *, write: bool) -> list[Path]:
    """The schema files that are out of date (written first when ``write``)."""
    shipped = Path(__file__).with_name(SCHEMA_FILE)
    text = render(build(json.loads(shipped.read_text(encoding="utf-8"))))
    stale = [p for p in (shipped, copy) if not p.exists() or p.read_text(encoding="utf-8") != text]
    if write:
        for p in stale:
            p.write_text(text, encoding="utf-8")
    return stale
