"""Structured logging: one JSON object per line on stderr.

Rules of this module:
- A session logs two lines, one at open and one at close, each carrying ``session_id`` and
  ``tenant`` (added by ``session_logger``). Nothing is logged per event.
- Log records carry facts, never secrets: no API keys, no Authorization headers, no audio, no
  transcript text. Code that logs a request logs selected fields only.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class SessionLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds the session's id and tenant to every record it emits."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def session_logger(session_id: str, tenant: str) -> SessionLogger:
    return SessionLogger(logging.getLogger("relay.session"), {"session_id": session_id, "tenant": tenant})
