"""Hot reload: watch the policy directory and swap in a new ``PolicyStore`` when files change.

Rules of this module:
- A new version is loaded and fully validated before it replaces the old one; the swap is one
  assignment plus the ``on_change`` callback. A broken edit leaves the old store in force, is
  logged with file, line and key path, and counted as ``relay_policy_reloads_total{result="error"}``.
- A failed set of files is not retried until the files change again (no log line every second).
- Polling, not inotify: every ``interval`` seconds the watcher fingerprints the directory (paths,
  sizes, mtimes and a content hash); an edit is picked up once the files stop changing (one
  settle delay), so an editor's half-written file is not loaded.
- Sessions are not affected: each keeps the ``TenantPolicy`` it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from relay.errors import PolicyConfigError
from relay.metrics import RelayMetrics
from relay.policy.errors import PolicyLoadErrors
from relay.policy.store import DEFAULT_FILE, TENANTS_DIR, PolicyStore

log = logging.getLogger("relay.policy")


def fingerprint(directory: Path) -> str:
    """A hash of every file the store reads (and of which exist), cheap enough to poll."""
    h = hashlib.sha256()
    candidates = [directory / DEFAULT_FILE, directory / "default.yml"]
    tdir = directory / TENANTS_DIR
    with contextlib.suppress(OSError):
        candidates.extend(sorted(p for p in tdir.iterdir() if not p.name.startswith(".")))
    for p in candidates:
        try:
            st = p.stat()
            data = p.read_bytes() if p.is_file() else b""
        except OSError:
            continue
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


class PolicyWatcher:
    """Keeps ``store`` current; calls ``on_change(store)`` after each successful swap."""

    def __init__(
        self,
        directory: str | Path,
        on_change: Callable[[PolicyStore], None],
        metrics: RelayMetrics | None = None,
        *,
        store: PolicyStore | None = None,
        interval: float = 1.0,
        settle: float = 0.2,
    ) -> None:
        """Args:
        directory: the policy directory.
        on_change: called on the event loop with the new store after a successful reload.
        metrics: counts reloads by result.
        store: the store in force now; loaded from ``directory`` (raising) when omitted.
        interval: seconds between polls.
        settle: seconds the files must stay unchanged before a reload.
        """
        self.directory = Path(directory)
        self.on_change = on_change
        self.metrics = metrics
        self.interval = interval
        self.settle = settle
        self.store = store if store is not None else PolicyStore.load(self.directory)
        self.last_error: PolicyConfigError | None = None
        self._seen = fingerprint(self.directory)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="policy-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def reload(self) -> bool:
        """Load the directory now and swap it in if valid (e.g. on SIGHUP). True on success."""
        self._seen = fingerprint(self.directory)
        try:
            store = PolicyStore.load(self.directory)
        except PolicyConfigError as exc:
            self._failed(exc)
            return False
        self._swap(store)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy watcher poll failed; will try again")

    async def _poll(self) -> None:
        current = await asyncio.to_thread(fingerprint, self.directory)
        if current == self._seen:
            return
        await asyncio.sleep(self.settle)
        again = await asyncio.to_thread(fingerprint, self.directory)
        if again != current:
            return  # still being written; look again next round
        self._seen = again
        try:
            store = await asyncio.to_thread(PolicyStore.load, self.directory)
        except PolicyConfigError as exc:
            self._failed(exc)
            return
        self._swap(store)

    def _swap(self, store: PolicyStore) -> None:
        old = self.store
        self.last_error = None
        self._count("ok")
        if store.version == old.version:
            return
        self.store = store
        log.info(
            "policies reloaded",
            extra={
                "policy_version": store.version,
                "previous_version": old.version,
                "tenants": store.tenants,
            },
        )
        self.on_change(store)

    def _failed(self, exc: PolicyConfigError) -> None:
        self.last_error = exc
        self._count("error")
        problems = exc.errors if isinstance(exc, PolicyLoadErrors) else [exc]
        log.error(
            "policy reload rejected; version %s stays in force: %s",
            self.store.version,
            "; ".join(str(p) for p in problems),
            extra={"policy_version": self.store.version, "problems": len(problems)},
        )

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_reloads_total.labels(result).inc()
