"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_rig import Rig

from mpi_kvbench.config import Config


@pytest.fixture
def rig() -> Iterator:
    """Makes engines on freshly opened tiers (``rig(cfg, run_id)``); closes them all."""
    made = []

    def make(cfg: Config, run_id: str = "e") -> Rig:
        r = Rig(cfg, f"{run_id}{len(made)}")
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
