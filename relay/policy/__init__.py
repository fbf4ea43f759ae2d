"""The policy engine: YAML policy files, validated and merged per tenant, run per session.

Public API (see docs/policies.md):
- ``PolicyStore.load(dir)`` → ``authenticate(key)``, ``tenant(name)`` → ``TenantPolicy``
  (``check_handshake``, ``bind`` → the session's ``PolicyChain``, ``section``).
- ``PolicyWatcher`` reloads the store when files change (and on demand, e.g. SIGHUP).
- ``hash_key(key)``: the sha256 hex a tenant file stores for a client key.
"""

from __future__ import annotations

from relay.policy.chain import PolicyChain
from relay.policy.errors import PolicyConfigError, PolicyLoadErrors, SectionError
from relay.policy.store import PolicyStore, TenantPolicy, hash_key
from relay.policy.watcher import PolicyWatcher

__all__ = [
    "PolicyChain",
    "PolicyConfigError",
    "PolicyLoadErrors",
    "PolicyStore",
    "PolicyWatcher",
    "SectionError",
    "TenantPolicy",
    "hash_key",
]
