"""Who writes the spool: one thread for all sessions, or the caller itself.

Rules of this module:
- ``SpoolThread``: one worker thread per recorder runs the spool's write jobs (audio runs, gzip
  members, ``syncfs``) first in, first out. The order is the durability contract: a ``syncfs`` job
  covers every job submitted before it, and a session's audio job precedes its log job.
  The heavy parts of a job (``pwritev``, ``zlib``, ``syncfs``) release the GIL, so the event loop
  keeps forwarding on the other core meanwhile.
- Jobs never raise into the thread: a job catches its own ``OSError`` and reports it with
  ``report`` (which runs the callback on the event loop). Anything else a job raises is logged
  here, since no one awaits a submitted job.
- Bounded: ``backlog`` is the bytes handed over and not written yet (``submit``'s ``size``). The
  recorder stops draining the sessions' queues while it is over ``BACKLOG_MAX``, so a slow disk
  fills those bounded queues and their overflow policy acts, instead of memory growing here.
- ``InlineIO`` runs jobs at once in the caller's thread (tests, tools without a loop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

log = logging.getLogger("relay.recording")

T = TypeVar("T")
BACKLOG_MAX = 64 * 1024 * 1024
"""Bytes handed to the spool thread and not written yet past which the recorder stops draining."""


class SpoolIO(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any, size: int = 0) -> None:
        """Run ``fn(*args)`` after every job submitted before it; ``size``: the bytes it holds."""

    def report(self, fn: Callable[..., Any], *args: Any) -> None:
        """From a job: run ``fn(*args)`` on the event loop (at once when inline)."""


class InlineIO:
    def submit(self, fn: Callable[..., Any], *args: Any, size: int = 0) -> None:
        fn(*args)

    def report(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)


class SpoolThread:
    """The recorder's spool thread. Create it on the event loop it reports to."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-spool")
        self._submitted = 0
        """Bytes handed over (written by the event loop only)."""
        self._written = 0
        """Bytes of finished jobs (written by the spool thread only)."""

    @property
    def backlog(self) -> int:
        return self._submitted - self._written

    def submit(self, fn: Callable[..., Any], *args: Any, size: int = 0) -> None:
        self._submitted += size
        self._pool.submit(self._job, fn, args, size).add_done_callback(_log_failure)

    def _job(self, fn: Callable[..., Any], args: tuple[Any, ...], size: int) -> None:
        try:
            fn(*args)
        finally:
            self._written += size

    def report(self, fn: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` after every job submitted before it; its result (or exception)."""
        return await self._loop.run_in_executor(self._pool, fn, *args)

    async def drained(self) -> None:
        """Return once every job submitted so far has run."""
        await self.run(_nothing)

    async def aclose(self) -> None:
        await self.drained()
        self._pool.shutdown(wait=False)


def _nothing() -> None:
    return None


def _log_failure(fut: Future[Any]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.error("recording spool job failed", exc_info=exc)
