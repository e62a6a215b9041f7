"""Session set-up for every test."""

from __future__ import annotations

import os
import tempfile
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
