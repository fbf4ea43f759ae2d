"""The relay's configuration: ``relay.yaml``, ``RELAY_*`` environment variables, ``${VAR}``.

Rules of this module:
- The dataclasses below are the whole schema; their field names are the user-facing keys (see
  docs/configuration.md). An unknown key is an error naming its path, never silently ignored.
- Precedence: built-in defaults < the YAML file < environment variables. The variable for a key is
  ``RELAY_`` plus its path in upper case joined by ``_`` (``upstream.api_key`` →
  ``RELAY_UPSTREAM_API_KEY``).
- ``${VAR}`` and ``${VAR:-default}`` in any string value are replaced from the environment when the
  file is read, so secrets stay out of the file.
- No I/O beyond reading the file; nothing here starts anything.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.errors import ConfigError

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"


@dataclass(slots=True)
class UpstreamConfig:
    url: str = OPENAI_REALTIME_URL
    api_key: str = ""
    connect_timeout: float = 10.0
    """Seconds for the upstream TCP + TLS + WebSocket handshake."""
    organization: str = ""
    project: str = ""


@dataclass(slots=True)
class S3Config:
    bucket: str = ""
    prefix: str = "recordings"
    region: str = "us-east-1"
    endpoint_url: str = ""
    sse: str = ""
    """``""`` (bucket default), ``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS)."""
    kms_key_id: str = ""
    storage_class: str = ""
    addressing_style: str = "auto"
    part_size_mb: int = 8


@dataclass(slots=True)
class RecordingConfig:
    enabled: bool = True
    sink: str = "local"
    """``local`` (a directory) or ``s3``."""
    local_dir: str = "recordings"
    spool_dir: str = "spool"
    queue_size: int = 2048
    """Events held between the pumps and the recorder per session before the overflow policy acts."""
    on_overflow: str = "terminate"
    """``terminate`` (close the session: no recording with holes) or ``drop`` (keep the call)."""
    spool_max_mb: int = 4096
    """Spool size at which new sessions are refused with 503."""
    fsync_interval: float = 1.0
    s3: S3Config = field(default_factory=S3Config)


@dataclass(slots=True)
class BudgetsConfig:
    store: str = "memory"
    """``memory`` (one process) or ``redis://host:port/db`` (shared by every replica)."""
    on_store_unavailable: str = "refuse_new"
    """``refuse_new`` (new sessions get 503, live ones meter locally) or ``allow``."""
    slot_lease_seconds: float = 30.0
    pricing: str = ""
    """Path of pricing.yaml; empty uses the copy shipped with the relay."""


@dataclass(slots=True)
class LimitsConfig:
    max_frame_bytes: int = 16 * 1024 * 1024
    """Largest client frame accepted (OpenAI: 15 MiB of audio per append, plus JSON)."""
    max_session_seconds: float = 3600.0
    upstream_max_frame_bytes: int = 64 * 1024 * 1024


@dataclass(slots=True)
class RelayConfig:
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:9464"
    tls_cert: str = ""
    tls_key: str = ""
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    policies_dir: str = "policies"
    drain_seconds: float = 30.0
    log_level: str = "info"
    log_format: str = "json"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)

    @property
    def simulated_upstream(self) -> bool:
        """True when no upstream key is set: the relay runs its built-in simulator as upstream."""
        return not self.upstream.api_key


def split_hostport(value: str, *, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: str, environ: typing.Mapping[str, str]) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; an unset variable without default becomes ``""``."""
    return _VAR.sub(lambda m: environ.get(m.group(1), m.group(2) or ""), value)


def load_config(
    path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None
) -> RelayConfig:
    """Build the configuration from defaults, an optional YAML file and the environment.

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type (named by path).
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        raw = _interpolate_tree(loaded, env)
    cfg: RelayConfig = _build(RelayConfig, raw, "")
    _apply_env(cfg, env, "RELAY", "")
    _check(cfg)
    return cfg


def _interpolate_tree(node: Any, env: typing.Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    return node


def _build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown configuration key {where}{key!r}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        kwargs[f.name] = _coerce(hints[f.name], raw[f.name], f"{where}{f.name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping")
        return _build(typing.cast(type[Any], tp), value, path + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, dict | list):
            raise ConfigError(f"{path}: expected a string")
        return str(value)
    return value


def _apply_env(obj: Any, env: typing.Mapping[str, str], prefix: str, path: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{prefix}_{f.name.upper()}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            _apply_env(getattr(obj, f.name), env, name, f"{path}{f.name}.")
        elif name in env:
            setattr(obj, f.name, _coerce(tp, env[name], f"{name} ({path}{f.name})"))


def _check(cfg: RelayConfig) -> None:
    split_hostport(cfg.listen, key="listen")
    split_hostport(cfg.admin_listen, key="admin_listen")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("tls_cert and tls_key go together: set both or neither")
    if cfg.recording.sink not in ("local", "s3"):
        raise ConfigError(f"recording.sink: expected local or s3, got {cfg.recording.sink!r}")
    if cfg.recording.on_overflow not in ("terminate", "drop"):
        raise ConfigError(
            f"recording.on_overflow: expected terminate or drop, got {cfg.recording.on_overflow!r}"
        )
    if cfg.recording.sink == "s3" and not cfg.recording.s3.bucket:
        raise ConfigError("recording.s3.bucket: required when recording.sink is s3")
    store = cfg.budgets.store
    if store != "memory" and not store.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"budgets.store: expected memory or a redis:// URL, got {store!r}")
    if cfg.budgets.on_store_unavailable not in ("refuse_new", "allow"):
        raise ConfigError("budgets.on_store_unavailable: expected refuse_new or allow")
    if cfg.drain_seconds < 0:
        raise ConfigError("drain_seconds: must be >= 0")
