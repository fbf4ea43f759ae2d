"""The policy store: every policy file of a directory, validated and merged per tenant.

Rules of this module:
- All or nothing: ``PolicyStore.load`` validates every file (schema, each policy's spec, every
  extra section) and raises on the first pass that finds problems, listing all of them. A store
  that exists is complete and immutable; hot reload swaps whole stores.
- Layout: ``default.yaml`` applies to every tenant; ``tenants/<tenant>.yaml`` holds the tenant's
  keys and its additions. The tenant name is the file stem.
- Merge rule (documented in docs/policies.md): the chain is the default chain; a tenant entry
  whose ``id`` matches a default entry replaces it in place (``enabled: false`` removes it); other
  tenant entries are appended in file order. Extra sections (``budgets``, ``recording``) merge one
  level deep: a tenant's top-level keys in the section replace the default's.
- Keys are stored as sha256 hex only. ``authenticate`` hashes the presented key and compares it
  with every stored hash using ``hmac.compare_digest`` (no early exit).
- ``version`` is a short sha256 over every file's path and bytes: the same files, the same version.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.contracts import SessionInfo
from relay.errors import PolicyConfigError
from relay.metrics import RelayMetrics
from relay.policy import schema
from relay.policy.base import Policy, policy_class
from relay.policy.chain import PolicyChain
from relay.policy.errors import PolicyLoadErrors, SectionError
from relay.policy.source import SourceDoc, join, read_file

SECTIONS: dict[str, str] = {
    "budgets": "relay.budget.spec:parse_budgets",
    "recording": "relay.recording.retention:parse_recording_policy",
}
"""Extra sections owned by other subsystems: section name → ``"module:function"``.

The parser is called as ``parser(node, key_path)`` with the merged section and raises
``ValueError("<key path>: message")`` or ``SectionError``. A parser module that does not exist
(yet) leaves the raw merged mapping in place.
"""

DEFAULT_FILE = "default.yaml"
TENANTS_DIR = "tenants"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
VERSION_CHARS = 16


def hash_key(key: str) -> str:
    """The sha256 hex digest of a client key: the only form a key is ever stored in."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class _Entry:
    id: str
    use: str
    spec: dict[str, Any]
    """The raw entry as written (for ``explain``)."""
    doc: SourceDoc
    path: str
    policy: Policy | None = None


@dataclass(slots=True)
class _Layer:
    """One parsed file: its chain entries and raw sections."""

    doc: SourceDoc
    entries: list[_Entry] = field(default_factory=list)
    disabled: list[tuple[str, str]] = field(default_factory=list)
    """(id, key path) of ``enabled: false`` entries."""


class TenantPolicy:
    """The effective policy of one tenant at one store version. Immutable."""

    def __init__(
        self,
        name: str,
        version: str,
        policies: tuple[Policy, ...],
        sections: dict[str, Any],
        effective: dict[str, Any],
    ) -> None:
        self.name = name
        self.version = version
        self.policies = policies
        self._sections = sections
        self._effective = effective

    def check_handshake(self, model: str, intent: str) -> None:
        """Refuse the upgrade before it happens.

        Raises:
            HandshakeRejected: e.g. 403 ``model_not_allowed``.
        """
        for policy in self.policies:
            policy.check_handshake(model, intent)

    def bind(self, info: SessionInfo, metrics: RelayMetrics | None) -> PolicyChain:
        """The per-session chain. ``info.policy_version`` is set to this version if empty."""
        if not info.policy_version:
            info.policy_version = self.version
        return PolicyChain(self.policies, info, metrics, version=self.version)

    def section(self, name: str) -> Any:
        """A parsed extra section (``budgets``, ``recording``), or None when absent."""
        return self._sections.get(name)

    def effective(self) -> dict[str, Any]:
        """The merged policy as plain data (keys masked), for ``relay policy explain``."""
        return self._effective


class PolicyStore:
    """Every tenant's effective policy, loaded from one directory."""

    def __init__(
        self,
        directory: Path,
        version: str,
        tenants: dict[str, TenantPolicy],
        keys: list[tuple[str, str, str]],
    ) -> None:
        self.directory = directory
        self.version = version
        self._tenants = tenants
        self._keys = keys  # (sha256 hex, tenant, key id)

    @classmethod
    def load(cls, directory: str | Path) -> PolicyStore:
        """Load and validate every policy file under ``directory``.

        Raises:
            PolicyConfigError: a ``PolicyLoadErrors`` listing each problem (file, line, key path).
        """
        return _Loader(Path(directory)).load()

    def authenticate(self, key: str) -> tuple[str, str] | None:
        """``(tenant, key_id)`` for a valid client key, else None. Constant time in the key."""
        digest = hash_key(key).encode()
        found: tuple[str, str] | None = None
        for stored, tenant, key_id in self._keys:
            if hmac.compare_digest(digest, stored.encode()) and found is None:
                found = (tenant, key_id)
        return found

    def tenant(self, name: str) -> TenantPolicy:
        """The effective policy of ``name``. Raises KeyError for an unknown tenant."""
        return self._tenants[name]

    @property
    def tenants(self) -> list[str]:
        return sorted(self._tenants)


def mask_key(sha256: str) -> str:
    return f"{sha256[:8]}…"


class _Loader:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.errors: list[PolicyConfigError] = []

    def fail(self, err: PolicyConfigError) -> None:
        self.errors.append(err)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise PolicyLoadErrors(self.errors)

    def load(self) -> PolicyStore:
        d = self.directory
        if not d.is_dir():
            raise PolicyLoadErrors([PolicyConfigError(str(d), None, "", "policy directory not found")])
        files = self._files()
        self.raise_if_errors()
        docs: dict[str, SourceDoc] = {}
        for name, path in files.items():
            try:
                doc = read_file(path)
            except PolicyConfigError as exc:
                self.fail(exc)
                continue
            self.errors.extend(schema.validate(doc))
            docs[name] = doc
        self.raise_if_errors()
        # The version hashes the bytes that were parsed, so it always matches what is in force.
        version = _version({name: doc.content for name, doc in docs.items()})
        default_doc = docs.pop("", None) or SourceDoc(str(d / DEFAULT_FILE), {})
        if "keys" in default_doc.data:
            self.fail(default_doc.error("keys", "keys belong in tenants/<tenant>.yaml, not in default.yaml"))
        default = self._layer(default_doc)
        tenants_layers = {name: self._layer(doc) for name, doc in sorted(docs.items())}
        self.raise_if_errors()
        keys = self._keys(tenants_layers)
        tenants: dict[str, TenantPolicy] = {}
        if not tenants_layers:
            # Still check the default's sections, so `relay policy check` finds their errors.
            self._sections(default, None)
        for name, layer in tenants_layers.items():
            chain = self._merge(default, layer)
            sections = self._sections(default, layer)
            policies = tuple(e.policy for e in chain if e.policy is not None)
            effective = _effective(name, version, chain, layer, sections, default)
            tenants[name] = TenantPolicy(name, version, policies, sections, effective)
        self.raise_if_errors()
        return PolicyStore(d, version, tenants, keys)

    def _files(self) -> dict[str, Path]:
        """'' → default.yaml, tenant name → tenant file."""
        d = self.directory
        out: dict[str, Path] = {}
        default = d / DEFAULT_FILE
        if default.is_file():
            out[""] = default
        elif (d / "default.yml").exists():
            self.fail(PolicyConfigError(str(d / "default.yml"), None, "", "rename to default.yaml"))
        tdir = d / TENANTS_DIR
        if tdir.is_dir():
            for p in sorted(tdir.iterdir()):
                if p.name.startswith("."):
                    continue
                if p.suffix == ".yml":
                    self.fail(PolicyConfigError(str(p), None, "", "tenant files end in .yaml"))
                elif p.suffix == ".yaml":
                    if not TENANT_NAME.match(p.stem):
                        self.fail(
                            PolicyConfigError(
                                str(p), None, "", "a tenant name is lowercase letters, digits, '-' or '_'"
                            )
                        )
                    else:
                        out[p.stem] = p
        return out

    def _layer(self, doc: SourceDoc) -> _Layer:
        layer = _Layer(doc)
        seen: dict[str, str] = {}
        for i, raw in enumerate(doc.data.get("policies") or []):
            path = join("policies", i)
            pid = str(raw.get("id") or raw.get("use") or "")
            if pid in seen:
                self.fail(
                    doc.error(
                        join(path, "id"),
                        f"duplicate policy id {pid!r} (also {seen[pid]}); give each entry its own id",
                    )
                )
                continue
            seen[pid] = path
            if raw.get("enabled", True) is False:
                layer.disabled.append((pid, path))
                continue
            entry = _Entry(pid, str(raw["use"]), raw, doc, path)
            cls = policy_class(entry.use)
            if cls is None:
                self.fail(doc.error(join(path, "use"), f"unknown policy {entry.use!r}"))
                continue
            wpath = join(path, "with")
            try:
                entry.policy = cls.from_spec(pid, raw.get("with") or {}, wpath)
            except SectionError as exc:
                self.fail(doc.error(exc.key_path, exc.message))
                continue
            except ValueError as exc:
                self.fail(doc.error(wpath, str(exc)))
                continue
            layer.entries.append(entry)
        return layer

    def _merge(self, default: _Layer, tenant: _Layer) -> list[_Entry]:
        chain = list(default.entries)
        index = {e.id: i for i, e in enumerate(chain)}
        removed: set[str] = set()
        for pid, path in tenant.disabled:
            if pid not in index:
                self.fail(tenant.doc.error(path, f"no policy {pid!r} in default.yaml to disable"))
            removed.add(pid)
        for entry in tenant.entries:
            if entry.id in index:
                chain[index[entry.id]] = entry
            else:
                index[entry.id] = len(chain)
                chain.append(entry)
        return [e for e in chain if e.id not in removed]

    def _sections(self, default: _Layer, tenant: _Layer | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, target in SECTIONS.items():
            merged, origin, fallback = _merge_section(name, default, tenant)
            if fallback is None:
                continue
            try:
                out[name] = _parse_section(target, merged, name)
            except SectionError as exc:
                self._section_error(exc.key_path, exc.message, name, origin, fallback)
            except ValueError as exc:
                key_path, _, message = str(exc).partition(": ")
                if not message or not key_path.startswith(name):
                    key_path, message = name, str(exc)
                self._section_error(key_path, message, name, origin, fallback)
        return out

    def _section_error(
        self, key_path: str, message: str, name: str, origin: dict[str, SourceDoc], fallback: SourceDoc
    ) -> None:
        rest = key_path[len(name) :].lstrip(".")
        first = re.split(r"[.\[]", rest, maxsplit=1)[0] if rest else ""
        doc = origin.get(first, fallback)
        err = doc.error(key_path, message)
        if not any(e.file == err.file and e.key == err.key and e.message == err.message for e in self.errors):
            self.fail(err)

    def _keys(self, layers: dict[str, _Layer]) -> list[tuple[str, str, str]]:
        keys: list[tuple[str, str, str]] = []
        owner: dict[str, str] = {}
        for tenant, layer in layers.items():
            ids: set[str] = set()
            for i, k in enumerate(layer.doc.data.get("keys") or []):
                path = join("keys", i)
                if k["id"] in ids:
                    self.fail(layer.doc.error(join(path, "id"), f"duplicate key id {k['id']!r}"))
                ids.add(k["id"])
                if k["sha256"] in owner:
                    self.fail(
                        layer.doc.error(
                            join(path, "sha256"), f"the same key is already used by {owner[k['sha256']]}"
                        )
                    )
                    continue
                owner[k["sha256"]] = f"tenant {tenant!r}"
                if k.get("enabled", True):
                    keys.append((k["sha256"], tenant, k["id"]))
        return keys


def _merge_section(
    name: str, default: _Layer, tenant: _Layer | None
) -> tuple[Any, dict[str, SourceDoc], SourceDoc | None]:
    """The merged section value, which file set each top-level key, and the file that set the
    section last (None: no file has the section). Mappings merge one level deep; any other value
    (``recording: false``) replaces what the default said."""
    value: Any = None
    origin: dict[str, SourceDoc] = {}
    last: SourceDoc | None = None
    for layer in (default, tenant):
        if layer is None or name not in layer.doc.data:
            continue
        node = layer.doc.data[name]
        last = layer.doc
        if isinstance(node, Mapping):
            if isinstance(value, dict):
                value = {**value, **node}
            else:
                value, origin = dict(node), {}
            origin.update({str(k): layer.doc for k in node})
        else:
            value, origin = node, {}
    return value, origin, last


def _parse_section(target: str, node: Any, key_path: str) -> Any:
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The owning subsystem is not there (yet): keep the raw mapping. Anything else failing
        # to import inside an existing module is a real error and propagates.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return node
        raise
    parser: Callable[[Any, str], Any] = getattr(module, func_name)
    return parser(node, key_path)


def _version(contents: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(contents):
        h.update(name.encode() + b"\0" + contents[name] + b"\0")
    return h.hexdigest()[:VERSION_CHARS]


def _effective(
    name: str,
    version: str,
    chain: list[_Entry],
    tenant: _Layer,
    sections: dict[str, Any],
    default: _Layer,
) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant": name, "version": version}
    out["keys"] = [
        {
            "id": k["id"],
            "sha256": mask_key(k["sha256"]),
            **({"enabled": False} if k.get("enabled") is False else {}),
        }
        for k in tenant.doc.data.get("keys") or []
    ]
    policies = []
    for e in chain:
        item = {"id": e.id, **{k: v for k, v in e.spec.items() if k != "id"}}
        item["from"] = "tenant" if e.doc is tenant.doc else "default"
        policies.append(item)
    out["policies"] = policies
    for sname in SECTIONS:
        raw, _, last = _merge_section(sname, default, tenant)
        if last is not None:
            out[sname] = raw
    return out


def __getattr__(name: str) -> Any:
    # ``from relay.policy.store import PolicyWatcher`` works too; imported lazily because the
    # watcher module itself imports this one.
    if name == "PolicyWatcher":
        from relay.policy.watcher import PolicyWatcher

        return PolicyWatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
