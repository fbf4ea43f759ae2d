"""Import every built-in policy module so each registers its ``use:`` name."""

from __future__ import annotations

from relay.policy import eventfilter, lockdown, models, redact, tools  # noqa: F401
