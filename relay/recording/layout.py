"""Where a recording lives: object keys in the sink and directory names in the spool.

Rules of this module:
- The key layout is a user-facing contract (docs/recording.md):
  ``<prefix>/tenant=<tenant>/date=<YYYY-MM-DD>/session=<session_id>/{audio.wav,events.jsonl.gz,manifest.json}``
  with the date of the session's start in UTC. The local sink uses the same relative paths.
- Key components never contain ``/`` or control characters: anything outside ``[A-Za-z0-9._@+-]`` is
  percent-encoded, so a hostile tenant or session id can neither escape its folder nor collide.
- Pure functions, no I/O.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

AUDIO = "audio.wav"
EVENTS = "events.jsonl.gz"
MANIFEST = "manifest.json"
OBJECT_NAMES = (AUDIO, EVENTS, MANIFEST)
ERASURES = "erasures"

_SAFE = "._@+-"
_SESSION_DIR = re.compile(r"^tenant=([^/]+)/date=(\d{4}-\d{2}-\d{2})/session=([^/]+)/?$")


def component(value: str) -> str:
    """A key component: percent-encode everything but ``[A-Za-z0-9._@+-]``; never empty or a dot name."""
    enc = quote(value, safe=_SAFE)
    if enc in ("", ".", ".."):
        enc = enc.replace(".", "%2E") or "%00"
    return enc


def date_of(started_at: float) -> str:
    """The UTC date (YYYY-MM-DD) of a wall-clock time in seconds since the epoch."""
    return dt.datetime.fromtimestamp(started_at, dt.UTC).strftime("%Y-%m-%d")


def join(prefix: str, *parts: str) -> str:
    p = prefix.strip("/")
    rest = "/".join(parts)
    return f"{p}/{rest}" if p else rest


@dataclass(frozen=True, slots=True)
class SessionLocation:
    """The folder of one session's recording, relative to the bucket (or the local directory)."""

    prefix: str
    tenant: str
    date: str
    session_id: str

    @property
    def folder(self) -> str:
        return join(
            self.prefix,
            f"tenant={component(self.tenant)}",
            f"date={self.date}",
            f"session={component(self.session_id)}",
        )

    def key(self, name: str) -> str:
        return f"{self.folder}/{name}"

    @property
    def erasure_key(self) -> str:
        """Where ``relay erase`` leaves its audit record for this session."""
        return join(
            self.prefix,
            ERASURES,
            f"tenant={component(self.tenant)}",
            f"date={self.date}",
            f"session={component(self.session_id)}.json",
        )


def location(prefix: str, tenant: str, started_at: float, session_id: str) -> SessionLocation:
    return SessionLocation(prefix.strip("/"), tenant, date_of(started_at), session_id)


def parse_folder(prefix: str, key: str) -> SessionLocation | None:
    """The session a key (or folder) belongs to, or None if it is not in the layout."""
    p = prefix.strip("/")
    rel = key
    if p:
        if not key.startswith(p + "/"):
            return None
        rel = key[len(p) + 1 :]
    head, _, tail = rel.rpartition("/")
    if tail in OBJECT_NAMES:
        rel = head
    m = _SESSION_DIR.match(rel)
    if m is None:
        return None
    return SessionLocation(p, unquote(m.group(1)), m.group(2), unquote(m.group(3)))


def tenant_prefix(prefix: str, tenant: str) -> str:
    return join(prefix, f"tenant={component(tenant)}") + "/"


def date_prefix(prefix: str, tenant: str, date: str) -> str:
    return join(prefix, f"tenant={component(tenant)}", f"date={date}") + "/"


def spool_name(session_id: str) -> str:
    """The spool directory name of a session (one flat level under ``spool_dir``, never hidden)."""
    name = component(session_id)
    return "%2E" + name[1:] if name.startswith(".") else name


def dates_between(since: dt.date, until: dt.date) -> list[str]:
    """Every date from ``since`` to ``until`` inclusive, as YYYY-MM-DD."""
    out: list[str] = []
    d = since
    while d <= until:
        out.append(d.isoformat())
        d += dt.timedelta(days=1)
    return out
