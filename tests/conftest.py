"""Fixtures shared by every test directory: a real S3 server (moto) for the object tier."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "s3"))

import s3server  # noqa: E402


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3server.S3Server]:
    """moto's S3 server on a free 127.0.0.1 port, with signature checking on: only its one
    access key is accepted. One per test worker process, stopped at the end."""
    pytest.importorskip("moto", reason="moto[server] not installed: pip install -e '.[test]'")
    pytest.importorskip("boto3", reason="boto3 (moto's dependency) not installed")
    server = s3server.start(auth=True)
    yield server
    server.stop()
