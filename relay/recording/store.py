"""Where finished recordings go: the object-store interface and the local-directory sink.

Rules of this module:
- ``ObjectStore`` is the only thing the uploader and the audit tools know about a sink. Two
  implementations: ``LocalStore`` here (the default, ``recording.local_dir``) and ``S3Store`` in
  ``relay.recording.s3``. Keys are the layout of ``relay.recording.layout``; the local sink uses them
  as paths under its directory.
- Every failure surfaces as ``StoreError`` with the backend's error code; the caller decides to
  retry. A local object appears complete or not at all (write to a temporary name, fsync, rename).
- ``digest(key)`` reads an object back for its size and SHA-256 (the uploader's check of
  ``audio.wav``); the local sink hashes the file in one worker-thread call and assembles multipart
  objects with ``copy_file_range`` (no copy through Python memory).
- Local objects are made read-only once written; a filesystem has no Object Lock, so retention
  on the local sink is recorded in the manifest and enforced only by ``relay erase``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from relay.recording.manifest import file_digest

READ_CHUNK = 1 << 20


class StoreError(Exception):
    def __init__(self, op: str, code: str, message: str) -> None:
        super().__init__(f"{op}: {code}: {message}")
        self.op = op
        self.code = code


@dataclass(frozen=True, slots=True)
class PutOptions:
    content_type: str = "application/octet-stream"
    sse: str = ""
    kms_key_id: str = ""
    storage_class: str = ""
    lock_mode: str = ""
    retain_until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Version:
    key: str
    version_id: str
    delete_marker: bool = False
    size: int = 0


class ObjectStore(Protocol):
    kind: str

    def describe(self) -> dict[str, Any]:
        """Where objects go (for the manifest's ``storage``); never credentials."""

    async def put(self, key: str, data: bytes | bytearray, opts: PutOptions) -> None: ...

    async def create_multipart(self, key: str, opts: PutOptions) -> str: ...

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        """Store part ``number``; ``data`` may be reused by the caller once this returns."""

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks. Raises StoreError (code ``NoSuchKey`` if absent)."""

    async def get(self, key: str) -> bytes: ...

    async def digest(self, key: str) -> tuple[int, str]:
        """Size and SHA-256 (hex) of the stored object, read back. Raises StoreError."""

    async def list_keys(self, prefix: str) -> list[str]: ...

    async def list_dirs(self, prefix: str) -> list[str]:
        """Immediate sub-folders of ``prefix`` (ending in ``/``), as full keys."""

    async def retention(self, key: str) -> tuple[str, dt.datetime] | None: ...

    async def versions(self, prefix: str) -> list[Version]: ...

    async def delete(self, version: Version, *, bypass_governance: bool) -> None: ...

    async def aclose(self) -> None: ...


class LocalStore:
    """The same layout in a local directory."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._mp = self.root / ".multipart"

    def describe(self) -> dict[str, Any]:
        return {"sink": "local", "directory": str(self.root)}

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise StoreError("path", "InvalidKey", f"key escapes the sink directory: {key!r}")
        return p

    async def put(self, key: str, data: bytes | bytearray, opts: PutOptions) -> None:
        await asyncio.to_thread(self._write_atomic, self._path(key), [data])

    def _write_atomic(self, path: Path, chunks: list[bytes | bytearray] | list[Path]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as f:
                for c in chunks:
                    if isinstance(c, Path):
                        f.flush()
                        _append_file(f.fileno(), c)
                    else:
                        f.write(c)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StoreError("put", "IOError", str(exc)) from exc

    async def create_multipart(self, key: str, opts: PutOptions) -> str:
        upload_id = uuid.uuid4().hex
        d = self._mp / upload_id
        try:
            d.mkdir(parents=True)
            (d / "key").write_text(key)
        except OSError as exc:
            raise StoreError("create_multipart", "IOError", str(exc)) from exc
        return upload_id

    def _upload_dir(self, op: str, upload_id: str) -> Path:
        d = self._mp / upload_id
        if not d.is_dir():
            raise StoreError(op, "NoSuchUpload", upload_id)
        return d

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        d = self._upload_dir("upload_part", upload_id)
        await asyncio.to_thread(self._write_part, d / f"{number:05d}.part", data)
        return f"local-{number}-{len(data)}"

    def _write_part(self, path: Path, data: bytes | bytearray) -> None:
        try:
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StoreError("upload_part", "IOError", str(exc)) from exc

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        d = self._upload_dir("complete_multipart", upload_id)
        files = [d / f"{n:05d}.part" for n, _ in sorted(parts)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise StoreError("complete_multipart", "InvalidPart", ", ".join(missing))
        await asyncio.to_thread(self._write_atomic, self._path(key), files)
        await asyncio.to_thread(shutil.rmtree, d, True)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._mp / upload_id, True)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            f = await asyncio.to_thread(open, self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError("get", "NoSuchKey", key) from None
        except OSError as exc:
            raise StoreError("get", "IOError", str(exc)) from exc
        try:
            while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
                yield chunk
        finally:
            f.close()

    async def get(self, key: str) -> bytes:
        return b"".join([c async for c in self.read(key)])

    async def digest(self, key: str) -> tuple[int, str]:
        try:
            return await asyncio.to_thread(file_digest, self._path(key))
        except FileNotFoundError:
            raise StoreError("get", "NoSuchKey", key) from None
        except OSError as exc:
            raise StoreError("get", "IOError", str(exc)) from exc

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_keys, prefix)

    def _list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix.rstrip("/") else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    out.append(str(Path(dirpath, name).relative_to(self.root)))
        return sorted(k for k in out if k.startswith(prefix))

    async def list_dirs(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix.rstrip("/") else self.root
        try:
            names = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []
        return [f"{prefix}{n}/" for n in names]

    async def retention(self, key: str) -> tuple[str, dt.datetime] | None:
        return None

    async def versions(self, prefix: str) -> list[Version]:
        keys = await self.list_keys(prefix)
        return [Version(k, "", False, (self.root / k).stat().st_size) for k in keys]

    async def delete(self, version: Version, *, bypass_governance: bool) -> None:
        path = self._path(version.key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError("delete", "IOError", str(exc)) from exc
        parent = path.parent  # folders exist only while they hold objects, as in S3
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def aclose(self) -> None:
        return None


def _append_file(fd: int, src: Path) -> None:
    """Append the file ``src`` to ``fd`` in the kernel (no copy through Python memory)."""
    copy_range = getattr(os, "copy_file_range", None)  # Linux
    with open(src, "rb", buffering=0) as f:
        left = os.fstat(f.fileno()).st_size
        while left > 0 and copy_range is not None:
            try:
                n = copy_range(f.fileno(), fd, left)
            except OSError:  # not supported between these files
                break
            if n == 0:
                break
            left -= n
        if left > 0:
            with open(fd, "wb", buffering=0, closefd=False) as out:
                shutil.copyfileobj(f, out, READ_CHUNK)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
