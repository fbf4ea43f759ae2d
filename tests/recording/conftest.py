"""Fixtures for the recording tests: one real SeaweedFS (S3) for the whole session.

The S3 credentials reach the relay's code only through the standard AWS chain (environment
variables set here for the test session), as in production.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from botocore.config import Config

from relay.config import RecordingConfig, S3Config
from tests.support.seaweed import SeaweedFS


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    server = SeaweedFS(Path(tempfile.mkdtemp(prefix="relay-seaweed-")))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.cleanup()


@pytest.fixture(scope="session")
async def s3_admin(seaweedfs: SeaweedFS) -> AsyncIterator[object]:
    """A raw aiobotocore client for the tests' own checks (bucket creation, read-backs)."""
    async with get_session().create_client(
        "s3",
        endpoint_url=seaweedfs.endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    ) as client:
        yield client


@pytest.fixture
async def bucket(s3_admin: object) -> str:
    """A fresh bucket with Object Lock enabled (so versioning is on too)."""
    name = f"rec-{uuid.uuid4().hex[:12]}"
    await s3_admin.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)  # type: ignore[attr-defined]
    return name


def s3_recording_config(tmp: Path, seaweedfs: SeaweedFS, bucket: str, **s3: object) -> RecordingConfig:
    return RecordingConfig(
        sink="s3",
        spool_dir=str(tmp / "spool"),
        local_dir=str(tmp / "unused"),
        fsync_interval=0.2,
        s3=S3Config(
            bucket=bucket,
            prefix="calls",
            region="us-east-1",
            endpoint_url=seaweedfs.endpoint,
            addressing_style="path",
            part_size_mb=5,
            **s3,  # type: ignore[arg-type]
        ),
    )
