"""The ``recording:`` section of a tenant policy file: on/off, Object Lock retention, storage class.

Rules of this module:
- The policy loader (relay.policy) calls ``parse_recording_policy(node, key_path)`` lazily for the
  ``recording:`` node of a file and turns a ``ValueError("<key path>: <message>")`` into its own
  ``PolicyConfigError`` with file and line. ``RECORDING_SCHEMA`` is the same rules as a JSON-Schema
  fragment for the published policy schema; both must agree (tests check a few cases with both).
- Credentials never live here: the S3 client uses the standard AWS chain only.
- Pure, no I/O.

Example::

    recording:
      enabled: true
      retention: {mode: COMPLIANCE, days: 2555}   # Object Lock on every object of the session
      storage_class: STANDARD_IA
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
)
MAX_RETENTION_DAYS = 36500
OVERFLOW_POLICIES = ("terminate", "drop")


@dataclass(frozen=True, slots=True)
class RecordingPolicy:
    """What a tenant's policy says about recording its sessions."""

    enabled: bool = True
    lock_mode: str = ""
    """``""`` (no Object Lock), ``GOVERNANCE`` or ``COMPLIANCE``."""
    retention_days: int = 0
    storage_class: str = ""
    """Overrides ``recording.s3.storage_class`` for this tenant; ``""`` keeps the process default."""
    on_overflow: str = ""
    """Overrides ``recording.on_overflow`` for this tenant; ``""`` keeps the process default."""

    def retain_until(self, now: float) -> dt.datetime | None:
        """The Object Lock retain-until date for objects written at ``now`` (None: no lock)."""
        if not self.lock_mode or self.retention_days <= 0:
            return None
        return dt.datetime.fromtimestamp(now, dt.UTC) + dt.timedelta(days=self.retention_days)


DEFAULT_POLICY = RecordingPolicy()

RECORDING_SCHEMA: dict[str, Any] = {
    # ``recording: false`` is shorthand for ``recording: {enabled: false}``; null keeps the defaults.
    "type": ["object", "boolean", "null"],
    "description": "Compliance recording of this tenant's sessions (docs/recording.md).",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean", "description": "Record sessions of this tenant (default true)."},
        "retention": {
            "type": "object",
            "description": "S3 Object Lock applied to every object of a session when it is written.",
            "additionalProperties": False,
            "required": ["mode", "days"],
            "properties": {
                "mode": {"enum": list(LOCK_MODES)},
                "days": {"type": "integer", "minimum": 1, "maximum": MAX_RETENTION_DAYS},
            },
        },
        "storage_class": {"enum": list(STORAGE_CLASSES)},
        "on_overflow": {"enum": list(OVERFLOW_POLICIES)},
    },
}


def parse_recording_policy(node: Any, key_path: str) -> RecordingPolicy:
    """Validate the ``recording:`` node of a policy file.

    Args:
        node: the parsed YAML value (``None`` means "all defaults").
        key_path: where the node sits in the file (``recording``), used to name errors.

    Raises:
        ValueError: ``"<key path>: <message>"`` for the first problem found.
    """
    if node is None:
        return DEFAULT_POLICY
    if isinstance(node, bool):
        return RecordingPolicy(enabled=node)
    if not isinstance(node, dict):
        raise ValueError(f"{key_path}: expected a mapping")
    unknown = sorted(set(node) - set(RECORDING_SCHEMA["properties"]))
    if unknown:
        raise ValueError(
            f"{key_path}.{unknown[0]}: unknown key (expected enabled, retention, storage_class, on_overflow)"
        )
    enabled = node.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{key_path}.enabled: expected true or false")
    mode, days = _retention(node.get("retention"), f"{key_path}.retention")
    storage_class = node.get("storage_class", "") or ""
    if storage_class and storage_class not in STORAGE_CLASSES:
        raise ValueError(f"{key_path}.storage_class: expected one of {', '.join(STORAGE_CLASSES)}")
    on_overflow = node.get("on_overflow", "") or ""
    if on_overflow and on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"{key_path}.on_overflow: expected terminate or drop")
    return RecordingPolicy(
        enabled=enabled,
        lock_mode=mode,
        retention_days=days,
        storage_class=storage_class,
        on_overflow=on_overflow,
    )


def _retention(node: Any, path: str) -> tuple[str, int]:
    if node is None:
        return "", 0
    if not isinstance(node, dict):
        raise ValueError(f"{path}: expected a mapping with mode and days")
    unknown = sorted(set(node) - {"mode", "days"})
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown key (expected mode, days)")
    mode = node.get("mode")
    if mode is None:
        raise ValueError(f"{path}.mode: required (GOVERNANCE or COMPLIANCE)")
    if not isinstance(mode, str) or mode.upper() != mode or mode not in LOCK_MODES:
        raise ValueError(f"{path}.mode: expected GOVERNANCE or COMPLIANCE, got {mode!r}")
    days = node.get("days")
    if days is None:
        raise ValueError(f"{path}.days: required (whole days of retention)")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"{path}.days: expected a whole number of days from 1 to {MAX_RETENTION_DAYS}")
    return mode, days
