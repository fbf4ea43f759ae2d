"""The relay's exceptions.

    RelayError
    ├── ConfigError            relay.yaml or the environment is wrong (names the key)
    │   └── PolicyConfigError  a policy file is wrong (names file, line and key path)
    ├── HandshakeRejected      refuse a client before the upgrade (carries the HTTP status)
    ├── UpstreamError          the upstream refused or failed (carries the HTTP status to answer)
    └── RecorderError          the recording cannot accept more (spool full, overflow)

Local versus remote is kept apart the h11 way: client and upstream failures are different classes,
so the pump maps each to its own close code in one place.
"""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    pass


class ConfigError(RelayError):
    pass


class PolicyConfigError(ConfigError):
    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.file = file
        self.line = line
        self.key = key
        self.message = message


class HandshakeRejected(RelayError):
    """Answer the client's upgrade request with an HTTP error in OpenAI's JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        error_type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.error_type = error_type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": None, "code": self.code}}


class UpstreamError(RelayError):
    def __init__(
        self, status: int, message: str, *, code: str = "upstream_error", retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after


class RecorderError(RelayError):
    pass
