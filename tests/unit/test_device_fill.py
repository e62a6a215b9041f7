"""Device preconditioning (``run.precondition_device_fills``): the blocks, the bytes and
their order, counted by a recording tier, by the kernel's I/O counters on a real slab
file, and in a run's summary."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import pytest

from mpi_kvbench.context import RankContext
from mpi_kvbench.engine.fill import fill_device
from mpi_kvbench.tiers.null import NullTier
from mpi_kvbench.tiers.storage import StorageTier

OBJ = 64 * 1024


class Recording(NullTier):
    """A null tier that remembers every write: slot and a digest of its bytes."""

    def open(self, ctx: RankContext) -> None:
        super().open(ctx)
        self.writes: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def write(self, slot: int, data: memoryview) -> int:
        with self.lock:
            self.writes.append((slot, hashlib.blake2b(data, digest_size=8).hexdigest()))
        return super().write(slot, data)


def recording(slots: int) -> Recording:
    tier = Recording(NullTier.Params(), slots * OBJ + 100, OBJ, level="storage")
    tier.open(RankContext(run_id="fill"))
    return tier


@pytest.mark.parametrize("fills, depth", [(2, 1), (2, 4), (0.5, 3), (1.3, 2)])
def test_fills_write_the_asked_blocks_in_order(fills: float, depth: int) -> None:
    tier = recording(7)
    done = fill_device(tier, fills, depth)
    want = round(fills * 7)                     # 14, 14, 4 (3.5 rounds to even), 9
    assert done.blocks == want and done.bytes == want * OBJ
    slots = sorted(tier.writes)                 # threads finish out of order; the set is exact
    assert [s for s, _ in slots] == sorted(i % 7 for i in range(want))
    assert len({digest for _, digest in tier.writes}) == want    # every block new bytes
    if depth == 1:                              # one thread: strictly sequential
        assert [s for s, _ in tier.writes] == [i % 7 for i in range(want)]


def test_a_stop_ends_the_fill_early() -> None:
    tier = recording(10)
    calls = []
    done = fill_device(tier, 3, 1, stop=lambda: len(tier.writes) >= 4,
                       progress=lambda d, t: calls.append((d, t)))
    assert done.blocks == 4 and len(tier.writes) == 4
    assert calls == [(k, 30) for k in range(1, 5)]


def test_the_kernel_counts_the_bytes_on_a_real_slab(tmp_path: Path) -> None:
    tier = StorageTier(StorageTier.Params(path=str(tmp_path)), 16 * OBJ, OBJ, level="storage")
    tier.open(RankContext(run_id="fillio"))
    try:
        if not tier.o_direct:
            pytest.skip("no O_DIRECT here: buffered writes reach the counters only at write-back")
        before = io_written()
        done = fill_device(tier, 2, 4)
        written = io_written() - before
    finally:
        tier.close()
    assert done.bytes == 2 * 16 * OBJ
    assert done.bytes <= written <= done.bytes + 1024 * 1024   # this process's device writes


def io_written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/self/io")


def test_the_summary_reports_the_fill(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mpi_kvbench", "--model", "tiny-1b", "--chunk-tokens", "16",
         "--gpu-mem-gb", "0", "--cpu-mem-gb", "0", "--storage-capacity-gb", "0.004",
         "--users", "1", "--duration", "0", "--max-requests", "1",
         "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}",
         "--set", "run.precondition_device_fills=2", "--results-dir", str(tmp_path),
         "--run-name", "f", "--cache-dir", str(tmp_path / "kv")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    with h5py.File(tmp_path / "f" / "result.h5", "r") as f:
        env = json.loads(f["ranks/environment"][0])
    storage = next(t for t in env["tiers"] if t["level"] == "storage")
    fill = summary["precondition_device_fill"]
    assert fill["bytes"] == 2 * storage["slots"] * summary["object_bytes"] == sum(fill["bytes_per_rank"])
    assert fill["block_bytes"] == summary["object_bytes"] and fill["blocks"] == 2 * storage["slots"]
    assert fill["gbps"] == pytest.approx(fill["bytes"] / 1e9 / fill["seconds"], rel=0.01)
    assert "device fill: writing 2 x" in proc.stdout and "device fills" in proc.stdout
    # not measured: the storage tier's measured writes are the requests' own
    assert summary["tiers"]["storage"]["write_bytes"] < fill["bytes"]
