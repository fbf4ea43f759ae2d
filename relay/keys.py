"""Client keys: made here, stored by tenants only as SHA-256 hashes.

``relay keys new <tenant>`` prints a fresh key once, and the line to paste into
``policies/tenants/<tenant>.yaml``. The relay never stores or logs the key itself.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "rr-"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def new_key() -> str:
    """A 256-bit random key with a recognisable prefix (secret scanners can match ``rr-``)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def valid_tenant_name(name: str) -> bool:
    return bool(_TENANT.match(name))


def new_key_entry(tenant: str, key_id: str | None = None) -> tuple[str, str, str]:
    """(key, key_id, yaml line) for a fresh key."""
    key = new_key()
    kid = key_id or f"{tenant}-{secrets.token_hex(3)}"
    line = f"  - {{id: {kid}, sha256: {key_sha256(key)}}}"
    return key, kid, line
