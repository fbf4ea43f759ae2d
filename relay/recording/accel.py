"""The optional C accelerator of the recorder's hot path (``relay.recording._speedups``), set up once.

Rules of this module:
- ``caller_run`` is the accelerator's function, or None: not built (no C compiler at install),
  no libcrypto with ``SHA256`` in this process, a self-check that failed, or
  ``RELAY_RECORDER_PURE_PYTHON=1`` in the environment. The recorder works the same without it.
- SHA-256 (``SHA256_Init`` / ``_Update`` / ``_Final``) comes from the libcrypto this Python's ``hashlib`` already loaded (found in
  ``/proc/self/maps``), else from the system's; the self-check compares it with ``hashlib``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
from collections.abc import Callable
from typing import Any

from pybase64 import b64decode

from relay.events import C2U

log = logging.getLogger("relay.recording")

CALLER_AUDIO = "input_audio_buffer.append"
_SHA256_FUNCTIONS = ("SHA256_Init", "SHA256_Update", "SHA256_Final")
"""The low-level calls: OpenSSL 3's one-shot ``SHA256`` looks the algorithm up on every call."""


def _libcrypto() -> ctypes.CDLL | None:
    import _hashlib  # noqa: F401 - loads the libcrypto we want to share

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libcrypto" in path:
                    return ctypes.CDLL(path)
    except OSError:
        pass
    name = ctypes.util.find_library("crypto")
    return ctypes.CDLL(name) if name else None


def _load() -> Callable[..., Any] | None:
    if os.environ.get("RELAY_RECORDER_PURE_PYTHON") == "1":
        return None
    try:
        from relay.recording import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        lib = _libcrypto()
        if lib is None:
            return None
        addresses = [ctypes.cast(getattr(lib, f), ctypes.c_void_p).value for f in _SHA256_FUNCTIONS]
        if not all(addresses):
            return None
        _speedups.setup(*addresses, b64decode, C2U, CALLER_AUDIO)
        probe = b"realtime-relay" * 100
        if _speedups.sha256_hex(probe) != hashlib.sha256(probe).hexdigest().encode():
            log.warning("the recorder's C accelerator failed its self-check; using the Python paths")
            return None
    except (OSError, AttributeError, ValueError) as exc:
        log.warning("the recorder's C accelerator is unavailable (%s); using the Python paths", exc)
        return None
    run: Callable[..., Any] = _speedups.caller_run
    return run


caller_run = _load()
