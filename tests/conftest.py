"""Fixtures shared by every test directory: a real S3 server (moto) for the object tier,
and test files on a disk when the temp dir is a memory file system."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpi_kvbench.devstats import memory_fs

ON_DISK = Path(__file__).resolve().parent.parent / ".pytest-tmp"


def pytest_configure(config: pytest.Config) -> None:
    """The storage tier refuses a memory file system (tmpfs) unless allowed. Where the
    system temp dir is one (many CI runners and clusters), the tests' files and the runs'
    scratch go to a folder under the checkout instead, so the tests still measure a disk.
    The environment reaches every worker and subprocess (they read TMPDIR)."""
    if not memory_fs(tempfile.gettempdir()) or memory_fs(str(ON_DISK.parent)):
        return
    ON_DISK.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(ON_DISK)
    tempfile.tempdir = None                      # made again from TMPDIR on next use
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = str(ON_DISK / "basetemp")


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
