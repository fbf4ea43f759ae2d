"""The local spool: every recorded byte lands here before it is uploaded.

Layout of ``recording.spool_dir``::

    .lock                         flock held by the one relay process that owns the spool
    <session>/state.json          facts, format, upload progress, close summary (atomic rewrite)
    <session>/left.000000.raw     caller channel, one file per part (mono, the WAV's encoding)
    <session>/right.000000.raw    assistant channel, same segmentation
    <session>/events.jsonl.gz     the event log: whole gzip members appended (one per flush)

Rules of this module:
- Segment ``k`` holds frames ``[k*N, (k+1)*N)`` of a channel, ``N`` = frames per multipart part,
  so the uploader builds part ``k+1`` from the two files of segment ``k`` and deletes them once the
  part is stored. Segment 0 stays until the end: the WAV header goes in front of it.
- The event log only grows by whole gzip members, so a crash can tear at most the last member and
  recovery drops it (``valid_gzip_prefix``).
- Audio is gathered in memory per channel (references to the chunks, no copy) while it is
  contiguous, and written with one ``pwritev`` when the session is flushed (at least once per
  ``fsync_interval``), when a write lands elsewhere, or past ``PENDING_MAX`` bytes; bytes reach
  the files in the order of the calls. The sink flushes audio before the log lines that refer
  to it.
- Durability: ``sync(root)`` makes everything written so far durable with one ``syncfs`` call for
  the whole spool (Linux; ``os.sync`` elsewhere) instead of one fsync per file.
- Plain blocking file calls: the writer calls them on the event loop about once a second per
  session; large reads (segments, whole logs) go through ``asyncio.to_thread`` in the callers,
  and ``read_segment_into`` fills a caller's reused buffer.
- The log's gzip members are standard gzip at level 1, deflated by ISA-L (``isal``: about 4x
  faster than zlib at level 1 on the log's lines, and smaller). A spool written by an older
  relay may hold zlib's members: both read as one gzip stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson
from isal import isal_zlib

from relay.recording.audioformat import AudioFormat
from relay.recording.timeline import LEFT, Op, Write

STATE = "state.json"
EVENTS = "events.jsonl.gz"
_CHANNEL_NAMES = ("left", "right")
_MAX_FDS = 4
_FILL_CHUNK = 1 << 16
PENDING_MAX = 1 << 18
"""Bytes of audio a channel gathers in memory before they are written."""
_MAX_CHUNKS = 512  # well under IOV_MAX (1024 on Linux)


def segment_name(channel: int, seg: int) -> str:
    return f"{_CHANNEL_NAMES[channel]}.{seg:06d}.raw"


class SessionSpool:
    """The files of one session. Not thread-safe: used from the event loop (and threads it awaits)."""

    def __init__(self, path: Path, part_size: int) -> None:
        self.path = path
        self.part_size = part_size
        self.frames_per_segment = 0
        self.fmt: AudioFormat | None = None
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._events_fd = -1
        self.events_size = 0
        self._sb = 0
        self._silence = b""
        self._chunks: tuple[list[bytes | memoryview], list[bytes | memoryview]] = ([], [])
        """Audio not written yet, per channel: frames ``[_start[c], _end[c])``, ``_size[c]`` bytes."""
        self._start = [0, 0]
        self._end = [0, 0]
        self._size = [0, 0]

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def set_format(self, fmt: AudioFormat) -> None:
        """Fix the WAV format; a segment then holds one part's worth of frames."""
        self.fmt = fmt
        self._sb = fmt.sample_bytes
        self._silence = fmt.silence * _FILL_CHUNK
        self.frames_per_segment = self.part_size // (2 * fmt.sample_bytes)

    # Audio --------------------------------------------------------------------------------------

    def apply(self, ops: list[Op]) -> None:
        """Carry out timeline instructions (``write`` / ``fill`` each)."""
        for op in ops:
            if op.__class__ is Write:
                self.write(op[0], op[1], op[2])
            else:
                self.fill(op[0], op[1], op[2])  # type: ignore[arg-type]

    def write(self, channel: int, frame: int, data: bytes | memoryview) -> None:
        """Audio for ``channel`` from ``frame`` on, in the WAV's encoding (whole samples).

        Contiguous writes are gathered (by reference: ``data`` must not change afterwards) and
        reach the file in one ``pwritev`` on ``flush``, on a write elsewhere, or when
        ``PENDING_MAX`` bytes are pending; bytes reach the file in the order of the calls.
        """
        chunks = self._chunks[channel]
        if chunks and frame != self._end[channel]:
            self.flush_channel(channel)
        if not chunks:
            self._start[channel] = frame
        chunks.append(data)
        size = self._size[channel] + len(data)
        self._size[channel] = size
        self._end[channel] = frame + len(data) // self._sb
        if size >= PENDING_MAX or len(chunks) >= _MAX_CHUNKS:
            self.flush_channel(channel)

    def fill(self, channel: int, frame: int, frames: int) -> None:
        """Silence on ``channel`` over ``[frame, frame + frames)`` (gathered like ``write``)."""
        sb = self._sb
        while frames > 0:
            n = frames if frames < _FILL_CHUNK else _FILL_CHUNK
            self.write(channel, frame, memoryview(self._silence)[: n * sb])
            frame += n
            frames -= n

    def flush(self) -> None:
        """Write the pending audio of both channels to the segment files."""
        if self._chunks[0]:
            self.flush_channel(0)
        if self._chunks[1]:
            self.flush_channel(1)

    def flush_channel(self, channel: int) -> None:
        chunks = self._chunks[channel]
        if not chunks:
            return
        frame, size = self._start[channel], self._size[channel]
        sb, n_seg = self._sb, self.frames_per_segment
        seg, off = divmod(frame, n_seg)
        if (n_seg - off) * sb >= size:  # the usual case: within one segment
            if os.pwritev(self._fd(channel, seg), chunks, off * sb) != size:
                raise OSError(errno.EIO, "short write to the recording spool")
        else:
            data = b"".join(chunks)
            pos = 0
            while pos < size:
                seg, off = divmod(frame, n_seg)
                piece = data[pos : pos + (n_seg - off) * sb]
                os.pwrite(self._fd(channel, seg), piece, off * sb)
                frame += len(piece) // sb
                pos += len(piece)
        chunks.clear()
        self._size[channel] = 0

    def _fd(self, channel: int, seg: int) -> int:
        key = (channel, seg)
        fd = self._fds.get(key)
        if fd is None:
            fd = os.open(self.path / segment_name(channel, seg), os.O_WRONLY | os.O_CREAT, 0o600)
            self._fds[key] = fd
            while len(self._fds) > _MAX_FDS:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(key)
        return fd

    def read_segment(self, channel: int, seg: int, frames: int) -> bytes:
        """``frames`` frames of a segment; missing bytes (never written) read as silence."""
        assert self.fmt is not None
        want = frames * self.fmt.sample_bytes
        try:
            with open(self.path / segment_name(channel, seg), "rb") as f:
                data = f.read(want)
        except FileNotFoundError:
            data = b""
        if len(data) < want:
            data += self.fmt.silence * ((want - len(data)) // self.fmt.sample_bytes)
        return data

    def read_segment_into(self, channel: int, seg: int, frames: int, buf: bytearray) -> int:
        """``read_segment`` into the start of ``buf`` (at least that long); returns the bytes."""
        assert self.fmt is not None
        want = frames * self.fmt.sample_bytes
        got = 0
        with memoryview(buf) as view:
            try:
                with open(self.path / segment_name(channel, seg), "rb", buffering=0) as f:
                    while got < want and (n := f.readinto(view[got:want])):
                        got += n
            except FileNotFoundError:
                pass
            if got < want:
                view[got:want] = self.fmt.silence * ((want - got) // self.fmt.sample_bytes)
        return want

    def delete_segment(self, seg: int) -> None:
        self.close_segment(seg)
        self.unlink_segment(seg)

    def close_segment(self, seg: int) -> None:
        """Close the writer's descriptors of segment ``seg`` (on the event loop, with the writer)."""
        for ch in (LEFT, 1):
            fd = self._fds.pop((ch, seg), None)
            if fd is not None:
                os.close(fd)

    def unlink_segment(self, seg: int) -> None:
        """Remove segment ``seg``'s files; freeing megabytes can take milliseconds: a worker's job."""
        for ch in (LEFT, 1):
            with contextlib.suppress(FileNotFoundError):
                (self.path / segment_name(ch, seg)).unlink()

    def written_frames(self) -> int:
        """The furthest frame written on either channel (for recovery after a crash)."""
        if self.fmt is None:
            return 0
        best = 0
        for entry in os.scandir(self.path):
            parts = entry.name.split(".")
            if len(parts) == 3 and parts[0] in _CHANNEL_NAMES and parts[2] == "raw":
                frames = (
                    int(parts[1]) * self.frames_per_segment + entry.stat().st_size // self.fmt.sample_bytes
                )
                best = max(best, frames)
        return best

    # Events -------------------------------------------------------------------------------------

    def append_events(self, member: bytes) -> None:
        if self._events_fd < 0:
            self._events_fd = os.open(self.path / EVENTS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        written = os.write(self._events_fd, member)
        if written != len(member):  # disk full part-way: never leave a torn member behind
            os.ftruncate(self._events_fd, self.events_size)
            raise OSError(errno.ENOSPC, "short write to the recording spool's event log")
        self.events_size += written

    def ensure_events(self) -> None:
        """Give a log that never got a line (its spool failed first) one empty gzip member, so
        the recording can still be finished and verified: zero lines, the chain's genesis."""
        if not (self.path / EVENTS).exists():
            self.append_events(gzip_member(b""))

    def read_events(self, start: int, size: int) -> bytes:
        with open(self.path / EVENTS, "rb") as f:
            f.seek(start)
            return f.read(size)

    # State --------------------------------------------------------------------------------------

    def save_state(self, state: dict[str, Any]) -> None:
        tmp = self.path / (STATE + ".tmp")
        tmp.write_bytes(orjson.dumps(state))
        os.replace(tmp, self.path / STATE)

    def load_state(self) -> dict[str, Any]:
        data = orjson.loads((self.path / STATE).read_bytes())
        if not isinstance(data, dict):
            raise ValueError("state.json is not an object")
        return data

    def close_files(self) -> None:
        self.flush()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._events_fd >= 0:
            os.close(self._events_fd)
            self._events_fd = -1

    def remove(self) -> None:
        self.close_files()
        shutil.rmtree(self.path, ignore_errors=True)


def gzip_member(data: bytes) -> bytes:
    """One complete gzip member; a file of concatenated members is a valid .gz file.

    Level 1: the lines are dominated by hex digests, so higher levels gain little for much more
    CPU. ISA-L's level 1 takes about a fifth of zlib's time on the log's lines (docs/recording.md).
    """
    return isal_zlib.compress(data, 1, wbits=31)


def valid_gzip_prefix(blob: bytes) -> tuple[int, bytes]:
    """(length of the longest prefix made of whole gzip members, their decompressed content)."""
    pos = 0
    out = bytearray()
    while pos < len(blob):
        d = zlib.decompressobj(wbits=31)
        try:
            chunk = d.decompress(blob[pos:])
        except zlib.error:
            break
        if not d.eof:
            break
        out += chunk
        pos = len(blob) - len(d.unused_data)
    return pos, bytes(out)


def dir_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (the spool size); tolerant of concurrent deletes."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


_libc: Any = None


def sync(root: Path) -> None:
    """Make everything written under ``root`` durable (syncfs on Linux, os.sync elsewhere)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syncfs  # noqa: B018 - probe
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        os.sync()
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class SpoolLock:
    """An exclusive flock on ``<spool>/.lock``: one relay process per spool directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd = -1

    def acquire(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
