"""The S3 sink: one aiobotocore client per process, SSE, Object Lock, storage class.

Rules of this module:
- Credentials come only from the standard AWS chain (environment, shared profile, web identity,
  instance / container roles): nothing here reads keys from relay.yaml or policy files.
- One client per process, opened in an ``AsyncExitStack`` by ``S3Store.open`` and closed by
  ``aclose``. botocore retries transient errors a few times itself; anything left surfaces as
  ``StoreError`` and the uploader backs off and retries (the data is still in the spool).
- Encryption: ``sse: AES256`` (SSE-S3) or ``sse: aws:kms`` with ``kms_key_id`` (SSE-KMS); Object
  Lock mode / retain-until and storage class come per object from ``PutOptions``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from relay.config import S3Config
from relay.recording.store import READ_CHUNK, PutOptions, StoreError, Version


def _error(op: str, exc: BaseException) -> StoreError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "Error"))
        return StoreError(op, code, str(err.get("Message", exc)))
    return StoreError(op, type(exc).__name__, str(exc))


_FAILURES = (ClientError, BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class S3Store:
    kind = "s3"

    def __init__(self, cfg: S3Config, client: Any, stack: AsyncExitStack) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self._client = client
        self._stack = stack

    @classmethod
    async def open(
        cls, cfg: S3Config, *, connect_timeout: float = 5.0, read_timeout: float = 60.0
    ) -> S3Store:
        stack = AsyncExitStack()
        config = Config(
            s3={"addressing_style": cfg.addressing_style or "auto"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": 3},
        )
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                region_name=cfg.region or None,
                endpoint_url=cfg.endpoint_url or None,
                config=config,
            )
        )
        return cls(cfg, client, stack)

    def describe(self) -> dict[str, Any]:
        return {
            "sink": "s3",
            "bucket": self.bucket,
            "region": self.cfg.region,
            "endpoint_url": self.cfg.endpoint_url or None,
            "sse": self.cfg.sse or None,
            "kms_key_id": self.cfg.kms_key_id or None,
        }

    def _put_args(self, opts: PutOptions) -> dict[str, Any]:
        args: dict[str, Any] = {"ContentType": opts.content_type}
        sse = opts.sse or self.cfg.sse
        if sse:
            args["ServerSideEncryption"] = sse
            kms = opts.kms_key_id or self.cfg.kms_key_id
            if sse == "aws:kms" and kms:
                args["SSEKMSKeyId"] = kms
        storage_class = opts.storage_class or self.cfg.storage_class
        if storage_class:
            args["StorageClass"] = storage_class
        if opts.lock_mode and opts.retain_until is not None:
            args["ObjectLockMode"] = opts.lock_mode
            args["ObjectLockRetainUntilDate"] = opts.retain_until
        return args

    async def put(self, key: str, data: bytes | bytearray, opts: PutOptions) -> None:
        try:
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **self._put_args(opts))
        except _FAILURES as exc:
            raise _error("put_object", exc) from exc

    async def create_multipart(self, key: str, opts: PutOptions) -> str:
        try:
            r = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **self._put_args(opts)
            )
        except _FAILURES as exc:
            raise _error("create_multipart_upload", exc) from exc
        return str(r["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        try:
            r = await self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        except _FAILURES as exc:
            raise _error("upload_part", exc) from exc
        return str(r["ETag"])

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        body = {"Parts": [{"PartNumber": n, "ETag": e} for n, e in sorted(parts)]}
        try:
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=body
            )
        except _FAILURES as exc:
            raise _error("complete_multipart_upload", exc) from exc

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except _FAILURES as exc:
            raise _error("abort_multipart_upload", exc) from exc

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            r = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with r["Body"] as body:
                while chunk := await body.read(READ_CHUNK):
                    yield chunk
        except _FAILURES as exc:
            raise _error("get_object", exc) from exc

    async def get(self, key: str) -> bytes:
        return b"".join([c async for c in self.read(key)])

    async def digest(self, key: str) -> tuple[int, str]:
        h = hashlib.sha256()
        size = 0
        async for chunk in self.read(key):
            size += len(chunk)
            h.update(chunk)
        return size, h.hexdigest()

    async def list_keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            async for page in pages:
                out.extend(o["Key"] for o in page.get("Contents", ()))
        except _FAILURES as exc:
            raise _error("list_objects_v2", exc) from exc
        return sorted(out)

    async def list_dirs(self, prefix: str) -> list[str]:
        out: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            async for page in pages:
                out.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
        except _FAILURES as exc:
            raise _error("list_objects_v2", exc) from exc
        return sorted(out)

    async def retention(self, key: str) -> tuple[str, dt.datetime] | None:
        try:
            r = await self._client.get_object_retention(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in (
                "NoSuchObjectLockConfiguration",
                "ObjectLockConfigurationNotFoundError",
                "InvalidRequest",
            ):
                return None
            raise _error("get_object_retention", exc) from exc
        except _FAILURES as exc:
            raise _error("get_object_retention", exc) from exc
        ret = r.get("Retention") or {}
        if not ret.get("Mode") or not ret.get("RetainUntilDate"):
            return None
        return str(ret["Mode"]), ret["RetainUntilDate"]

    async def versions(self, prefix: str) -> list[Version]:
        out: list[Version] = []
        try:
            pages = self._client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            async for page in pages:
                for v in page.get("Versions", ()):
                    out.append(Version(v["Key"], v.get("VersionId") or "", False, int(v.get("Size", 0))))
                for v in page.get("DeleteMarkers", ()):
                    out.append(Version(v["Key"], v.get("VersionId") or "", True))
        except _FAILURES as exc:
            raise _error("list_object_versions", exc) from exc
        return out

    async def delete(self, version: Version, *, bypass_governance: bool) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": version.key}
        if version.version_id and version.version_id != "null":
            args["VersionId"] = version.version_id
        if bypass_governance:
            args["BypassGovernanceRetention"] = True
        try:
            await self._client.delete_object(**args)
        except _FAILURES as exc:
            raise _error("delete_object", exc) from exc

    async def head(self, key: str) -> dict[str, Any]:
        try:
            r: dict[str, Any] = await self._client.head_object(Bucket=self.bucket, Key=key)
        except _FAILURES as exc:
            raise _error("head_object", exc) from exc
        return r

    async def aclose(self) -> None:
        await self._stack.aclose()
