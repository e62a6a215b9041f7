"""Tier plug-ins built through the registry: storage (O_DIRECT slab file), DRAM, HBM, null."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.registry import TIERS

OBJ = 3 * 4096


def build(name: str, capacity: int, obj: int = OBJ, **params):
    cls = TIERS.load(name)
    level = {"null": "storage"}.get(name, name)
    return cls(cls.Params(**params), capacity, obj, level=level)


def pattern(slot: int, obj: int = OBJ) -> mmap.mmap:
    buf = aligned_buffer(obj)
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr[:] = np.random.default_rng(slot).integers(0, 256, obj, dtype=np.uint8)
    return buf


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def o_direct_works(directory: Path) -> bool:
    probe = directory / ".odirect-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    try:
        buf = mmap.mmap(-1, 4096)
        os.pwritev(fd, [buf], 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


def roundtrip(tier, slots: list[int]) -> None:
    for s in slots:
        assert tier.write(s, pattern(s, tier.object_bytes)) == tier.object_bytes
    for s in reversed(slots):                     # read back in another order
        out = aligned_buffer(tier.object_bytes)
        assert tier.read(s, out) == tier.object_bytes
        assert bytes(out) == bytes(pattern(s, tier.object_bytes)), f"slot {s}"


# ---- storage ------------------------------------------------------------------------------


def test_storage_roundtrip_with_o_direct(tmp_path: Path) -> None:
    if not o_direct_works(tmp_path):
        pytest.skip(f"{tmp_path}: the file system refuses O_DIRECT")
    tier = build("storage", 10 * OBJ, path=str(tmp_path / "kv"))
    tier.open(RankContext(run_id="t1"))
    try:
        assert tier.slots == 10
        roundtrip(tier, [0, 9, 3, 4])
        info = tier.info()
        assert info["o_direct"] is True
        assert info["kind"] == "storage" and info["slots"] == 10
        assert info["path"] == tier.path and info["fs_type"] not in ("", None)
        assert os.path.getsize(tier.path) == 10 * OBJ       # the file holds slot 9 at its end
        # the data really is in the file at slot * object_bytes
        with open(tier.path, "rb") as fh:
            fh.seek(3 * OBJ)
            assert fh.read(OBJ) == bytes(pattern(3))
        # overwrite a slot
        tier.write(3, pattern(77))
        out = aligned_buffer(OBJ)
        tier.read(3, out)
        assert bytes(out) == bytes(pattern(77))
    finally:
        tier.close()


def test_storage_without_o_direct_still_round_trips(tmp_path: Path) -> None:
    tier = build("storage", 4 * OBJ, path=str(tmp_path), o_direct=False)
    tier.open(RankContext(run_id="t2"))
    try:
        roundtrip(tier, [0, 1, 2, 3])
        assert tier.info()["o_direct"] is False
    finally:
        tier.close()


def test_storage_creates_one_file_and_only_the_directories_it_needs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("not ours")
    before = tree(tmp_path)
    tier = build("storage", 4 * OBJ, path=str(tmp_path / "a" / "b" / "c{rank}"))
    tier.open(RankContext(rank=3, run_id="t3"))
    new = tree(tmp_path) - before
    assert new == {"a/b", "a/b/c3", f"a/b/c3/{os.path.basename(tier.path)}"}
    assert os.path.basename(tier.path) == "kvbench-t3-rank3.slab"
    tier.write(0, pattern(0))
    tier.close()
    assert tree(tmp_path) == before
    assert (tmp_path / "a" / "keep.txt").read_text() == "not ours"
    tier.close()                                  # twice is safe
    assert tree(tmp_path) == before


def test_storage_in_an_existing_directory_leaves_the_neighbours_alone(tmp_path: Path) -> None:
    (tmp_path / "other.slab").write_bytes(b"x" * 10)
    tier = build("storage", 4 * OBJ, path=str(tmp_path))
    tier.open(RankContext(run_id="t4"))
    assert tree(tmp_path) == {"other.slab", os.path.basename(tier.path)}
    tier.close()
    assert tree(tmp_path) == {"other.slab"}
    assert (tmp_path / "other.slab").read_bytes() == b"x" * 10


def test_storage_keeps_a_directory_that_someone_else_filled(tmp_path: Path) -> None:
    tier = build("storage", 4 * OBJ, path=str(tmp_path / "new"))
    tier.open(RankContext(run_id="t5"))
    (tmp_path / "new" / "theirs").write_text("x")  # appears while the run is on
    tier.close()
    assert tree(tmp_path) == {"new", "new/theirs"}


def test_storage_refuses_an_existing_file(tmp_path: Path) -> None:
    ctx = RankContext(run_id="t6")
    existing = tmp_path / "kvbench-t6-rank0.slab"
    existing.write_bytes(b"precious")
    tier = build("storage", 4 * OBJ, path=str(tmp_path))
    with pytest.raises((OSError, ConfigError)):
        tier.open(ctx)
    tier.close()
    assert existing.read_bytes() == b"precious"
    assert tree(tmp_path) == {existing.name}


def test_two_ranks_get_two_files(tmp_path: Path) -> None:
    t0 = build("storage", 4 * OBJ, path=str(tmp_path))
    t1 = build("storage", 4 * OBJ, path=str(tmp_path))
    t0.open(RankContext(rank=0, run_id="t7"))
    t1.open(RankContext(rank=1, run_id="t7"))
    try:
        assert t0.path != t1.path
        t0.write(0, pattern(0))
        t1.write(0, pattern(1))
        out = aligned_buffer(OBJ)
        t0.read(0, out)
        assert bytes(out) == bytes(pattern(0))
    finally:
        t0.close()
        t1.close()
    assert tree(tmp_path) == set()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.parametrize("share", [0.8, 0.25])
def test_storage_capacity_is_capped_by_free_space(tmp_path: Path, share: float) -> None:
    huge = 10**18
    tier = build("storage", huge, max_free_share=share, path=str(tmp_path))
    before = free_bytes(tmp_path)
    tier.open(RankContext(run_id="t8"))
    try:
        # the free space it saw lies between what was free before and after (plus what it
        # reserved): other jobs write and delete on this disk meanwhile
        after = free_bytes(tmp_path) + tier.slots * OBJ
        lo, hi = share * min(before, after), share * max(before, after)
        assert tier.requested_bytes == huge
        assert 0.99 * lo <= tier.capacity_bytes <= 1.01 * hi
        assert tier.slots == tier.capacity_bytes // OBJ
        assert tier.info()["configured_bytes"] == huge
    finally:
        tier.close()


def test_storage_capacity_below_the_cap_is_kept(tmp_path: Path) -> None:
    tier = build("storage", 7 * OBJ + 100, path=str(tmp_path))
    tier.open(RankContext(run_id="t9"))
    try:
        assert tier.capacity_bytes == 7 * OBJ + 100 and tier.slots == 7
    finally:
        tier.close()


def test_ranks_sharing_a_file_system_together_stay_under_the_share(tmp_path: Path) -> None:
    huge = 10**18
    tiers = []
    free = free_bytes(tmp_path)   # before: each tier reserves what it takes
    try:
        for r in range(2):
            t = build("storage", huge, path=str(tmp_path))
            t.open(RankContext(rank=r, world_size=2, local_rank=r, nodes=1, replicas=2,
                               group=r, run_id="t10"))
            tiers.append(t)
        total = sum(t.capacity_bytes for t in tiers)
        assert total <= 0.8 * free * 1.01
    finally:
        for t in tiers:
            t.close()


def test_storage_share_must_be_in_range() -> None:
    with pytest.raises(ConfigError, match="max_free_share"):
        TIERS.params("storage", {"max_free_share": 1.5}, "tiers.storage")
    with pytest.raises(ConfigError, match="max_free_share"):
        TIERS.params("storage", {"max_free_share": 0}, "tiers.storage")


# ---- memory tiers ---------------------------------------------------------------------------


def test_dram_roundtrip() -> None:
    tier = build("dram", 6 * OBJ + 5)
    tier.open(RankContext())
    try:
        assert tier.slots == 6
        roundtrip(tier, list(range(6)))
        assert tier.info()["kind"] == "dram" and tier.info()["slots"] == 6
    finally:
        tier.close()
    tier.close()


def test_hbm_emulated_roundtrip() -> None:
    tier = build("hbm", 5 * OBJ, device="emulated")
    tier.open(RankContext())
    try:
        roundtrip(tier, [4, 0, 2])
        info = tier.info()
        assert info["emulated"] is True and info["device"] == "emulated"
    finally:
        tier.close()


def test_hbm_torch_cpu_roundtrip() -> None:
    torch = pytest.importorskip("torch")
    tier = build("hbm", 5 * OBJ, device="cpu")
    tier.open(RankContext())
    try:
        assert tier._torch is torch                     # really the torch path
        roundtrip(tier, [1, 3, 4])
        info = tier.info()
        assert info["device"] == "cpu" and info["emulated"] is True
    finally:
        tier.close()


def test_hbm_auto_without_a_gpu_is_emulated() -> None:
    if os.path.exists("/proc/driver/nvidia"):
        pytest.skip("this machine has an NVIDIA driver")
    tier = build("hbm", 2 * OBJ)
    tier.open(RankContext())
    try:
        assert tier.info()["emulated"] is True
        roundtrip(tier, [0, 1])
    finally:
        tier.close()


def test_hbm_bad_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tiers.hbm.device"):
        TIERS.params("hbm", {"device": "tpu"}, "tiers.hbm")


def test_null_tier_moves_nothing_but_reports_bytes() -> None:
    tier = build("null", 4 * OBJ)
    tier.open(RankContext())
    try:
        assert tier.needs_payload is False
        assert tier.write(2, pattern(2)) == OBJ
        out = aligned_buffer(OBJ)
        np.frombuffer(out, dtype=np.uint8)[:] = 7
        assert tier.read(2, out) == OBJ
        assert bytes(out) == bytes([7]) * OBJ            # nothing was copied in
        assert tier.info()["latency_us"] == 0.0
    finally:
        tier.close()


def test_null_latency_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="latency_us"):
        TIERS.params("null", {"latency_us": -1}, "tiers.storage")


def test_registry_names_and_errors() -> None:
    assert {"hbm", "dram", "storage", "null"} <= set(TIERS.names())
    with pytest.raises(ConfigError, match="'storage'"):
        TIERS.load("storag")
    with pytest.raises(ConfigError, match="unknown setting"):
        TIERS.params("dram", {"path": "/tmp"}, "tiers.dram")


def test_calibration_leaves_nothing_when_its_set_up_fails(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The slab is open (and its directories made) before the payload ring: a ring that
    cannot be made must not leave the directories, nor the descriptor, behind."""
    from mpi_kvbench import calibrate as cal

    def no_memory(*args, **kwargs):
        raise MemoryError("ring")

    monkeypatch.setattr(cal, "PayloadSource", no_memory)
    params = TIERS.load("storage").Params(path=str(tmp_path / "new" / "dir"))
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(MemoryError):
        cal.calibrate(params, RankContext(run_id="cal"), OBJ, 2, 4 * OBJ)
    assert tree(tmp_path) == set()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_null_tier_cannot_be_another_ranks_source() -> None:
    """What keeps disaggregated serving off the virtual clock (the engine has no trace-mode
    handoff): a decode rank cannot open a null storage tier, and set-up says why."""
    tier = build("null", 4 * OBJ)
    tier.open(RankContext())
    try:
        assert tier.instant and tier.location() is None
        with pytest.raises(ConfigError, match="null tier cannot be read by another rank"):
            tier.open_peer("anywhere")
    finally:
        tier.close()
