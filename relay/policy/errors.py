"""Errors raised while loading policy files, and the fault raised by a policy at run time.

- ``SectionError(key_path, message)``: raised by a section parser (``budgets``, ``recording``) or by
  a policy's ``from_spec`` to name the exact key that is wrong; the loader turns it into a
  ``relay.errors.PolicyConfigError`` carrying file and line.
- ``PolicyConfigError`` itself lives in ``relay.errors`` (it is a ``ConfigError``); re-exported here.
"""

from __future__ import annotations

from relay.errors import PolicyConfigError


class SectionError(ValueError):
    """A value in a policy file is wrong. ``key_path`` is dotted with ``[i]`` for list items."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(f"{key_path}: {message}")
        self.key_path = key_path
        self.message = message


class PolicyLoadErrors(PolicyConfigError):
    """Several problems found in one pass; ``errors`` lists them all, the first is the headline."""

    def __init__(self, errors: list[PolicyConfigError]) -> None:
        first = errors[0]
        super().__init__(first.file, first.line, first.key, first.message)
        self.errors = errors

    def __str__(self) -> str:
        more = len(self.errors) - 1
        head = super().__str__()
        return head if not more else f"{head} (and {more} more problem{'s' if more > 1 else ''})"


__all__ = ["PolicyConfigError", "PolicyLoadErrors", "SectionError"]
