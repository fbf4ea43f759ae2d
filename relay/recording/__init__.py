"""Compliance recording: the whole call as the caller heard it, a hashed event log, a manifest.

Public API (used by the server and the policy loader):
- ``Recorder`` — one per process: ``await Recorder.create(cfg, metrics, relay_version=...)``,
  ``admit()``, ``open(info, policy) -> sink``, ``await aclose()``.
- ``SessionRecording`` — the per-session ``RecordingSink`` (``overflowed``, ``on_overflow``).
- ``RecordingPolicy``, ``parse_recording_policy``, ``RECORDING_SCHEMA`` — the policy-file section.

See docs/recording.md for the layout, formats, guarantees and the audit tools.
"""

from relay.recording.recorder import NullRecording, Recorder
from relay.recording.retention import RECORDING_SCHEMA, RecordingPolicy, parse_recording_policy
from relay.recording.sink import SessionRecording

__all__ = [
    "RECORDING_SCHEMA",
    "NullRecording",
    "Recorder",
    "RecordingPolicy",
    "SessionRecording",
    "parse_recording_policy",
]
