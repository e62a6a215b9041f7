"""Honest storage: memory posing as storage refused, capacity cuts reported, the device's
own counters beside the tool's bytes, and reads of what was never written failing the run.

Runs go through ``cli.main`` in this process on a one-rank world (as test_config_cli
does): the real pipeline, real files, real device counters, no interpreter start-up."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpi_kvbench import cli as cli_mod
from mpi_kvbench import devstats
from mpi_kvbench import run as run_mod
from mpi_kvbench.config import load
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import payload as pl
from mpi_kvbench.engine.iopool import READ, WRITE, IOPool, Op
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.mpi.comm import SerialComm
from mpi_kvbench.registry import TIERS
from mpi_kvbench.tiers import open_tiers
from mpi_kvbench.tiers.storage import StorageTier

OBJ = 64 * 24_576            # tiny-1b, 64-token chunks: 1.5 MiB objects
# storage only, so every byte the tool counts goes to the slab file; a few users with
# short prompts, so second turns read back what the first wrote
BASE = ["--duration", "0", "--model", "tiny-1b", "--chunk-tokens", "64", "--io-depth", "4",
        "--gpu-mem-gb", "0", "--cpu-mem-gb", "0", "--users", "3",
        "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}"]


class LossyTier(StorageTier):
    """Storage that loses data: after ``keep`` writes every write says it wrote its bytes
    and wrote nothing (a dropped write cache). The slab is sized at open, as a
    preallocated one is, so reads of those slots return a hole's zeros at full length:
    only the stamps can tell (the short reads of a truncated slab: see the test below)."""

    name = "lossy"

    @dataclasses.dataclass(frozen=True)
    class Params(StorageTier.Params):
        keep: int = 4

    def open(self, ctx: RankContext) -> None:
        super().open(ctx)
        os.ftruncate(self.fd, self.capacity_bytes)
        self._writes = 0

    def write(self, slot: int, data: memoryview) -> int:
        self._writes += 1
        return super().write(slot, data) if self._writes <= self.params.keep else len(data)


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``main(tmp, *args)`` -> (exit status, stdout, stderr, summary or None)."""
    monkeypatch.setattr(run_mod, "world", SerialComm)
    monkeypatch.setitem(TIERS._targets, "lossy", f"{__name__}:LossyTier")
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)

    def call(tmp: Path, *args: str):
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = cli_mod.main(list(args) if args[0] == "calibrate" else
                                ["--results-dir", str(tmp / "res"), "--run-name", "r", *args])
        out, err = capsys.readouterr()
        path = tmp / "res" / "r" / "summary.json"
        return code, out, err, json.loads(path.read_text()) if path.exists() else None
    return call


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs mounted for the test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture
def private_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 MB ext4 on a loop device of its own (needs root, losetup and mkfs.ext4): a
    block device no other process touches, so its counters are this run's alone."""
    if os.geteuid() != 0:
        pytest.skip("a loop device needs root")
    image, mnt = tmp_path / "disk.img", tmp_path / "disk"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(256 << 20)

    def sh(*cmd: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError as exc:
            pytest.skip(f"{cmd[0]} is not installed: {exc}")

    if sh("mkfs.ext4", "-q", "-F", str(image)).returncode:
        pytest.skip("mkfs.ext4 failed")
    loop = sh("losetup", "-f", "--show", str(image))
    if loop.returncode:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    try:
        if sh("mount", dev, str(mnt)).returncode:
            pytest.skip(f"cannot mount {dev}")
        yield mnt
    finally:
        sh("umount", str(mnt))
        sh("losetup", "-d", dev)


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# -- memory posing as storage ------------------------------------------------------------
def test_a_tmpfs_storage_path_is_refused_in_one_line(tmpfs: Path, tmp_path: Path, main) -> None:
    code, out, err, summary = main(tmp_path, *BASE, "--max-requests", "2",
                                   "--cache-dir", str(tmpfs / "kv"))
    assert code == 2 and summary is None
    assert errors(err) == [
        f"error: tiers.storage.path: {tmpfs / 'kv'} is tmpfs (memory), so the storage tier would"
        " measure RAM; use a disk-backed path or set tiers.storage.allow_memory: true"]
    assert not (tmpfs / "kv").exists()     # the directory it made is gone again
    code, out, err, _ = main(tmp_path, "calibrate", "--cache-dir", str(tmpfs / "c"), "--size-gb", "0.1")
    assert code == 2 and len(errors(err)) == 1 and "is tmpfs (memory)" in err
    code, out, err, _ = main(tmp_path, "calibrate", "--cache-dir", str(tmpfs / "c"), "--size-gb", "0.1",
                             "--set", "tiers.storage.allow_memory=true")
    assert code == 0 and "(tmpfs, O_DIRECT" in out


def test_an_allowed_tmpfs_is_said_and_capped_to_its_free_space(tmpfs: Path, tmp_path: Path,
                                                               main) -> None:
    """allow_memory lets the tmpfs through; the summary and console say it is memory, the
    device comparison is n/a, and 1 GB asked on a 64 MB tmpfs is cut to its free space."""
    code, out, err, s = main(tmp_path, *BASE, "--max-requests", "4", "--cache-dir", str(tmpfs / "kv"),
                             "--storage-capacity-gb", "1", "--set", "tiers.storage.allow_memory=true")
    assert code == 0, err
    assert s["storage_memory_backed"] == "tmpfs"
    assert "storage is tmpfs (memory)" in out
    assert s["device_io"]["n/a"] == "tmpfs is memory-backed: no block device"
    assert "device I/O: n/a (tmpfs is memory-backed" in out
    st = s["tiers"]["storage"]
    slots = int(0.8 * 64 * 2**20) // OBJ                      # max_free_share of an empty 64 MiB
    assert (st["capacity_gb_requested"], st["slots"]) == (1.0, slots)
    assert st["capacity_gb_used"] == round(slots * OBJ / 1e9, 6)
    capped = [line for line in err.splitlines() if line.startswith("warning: tiers.storage")]
    assert capped == [f"warning: tiers.storage: 1 GB per rank asked, {slots * OBJ / 1e9:.3g} GB"
                      f" ({slots} objects) used ({64 * 2**20 / 1e9:.2f} GB free on {tmpfs / 'kv'}"
                      " (tmpfs), max_free_share 0.8 over 1 rank(s))"]


# -- capacity: cut by free space, or less than one object -------------------------------
def test_a_tier_smaller_than_one_object_is_an_error_naming_it(tmp_path: Path) -> None:
    for level, flag in (("hbm", "hbm"), ("dram", "dram")):
        cfg = load(None, [{"model": {"name": "tiny-1b"}, "kv": {"chunk_tokens": 64},
                           "tiers": {"hbm": {"capacity_gb": 0, "device": "emulated"},
                                     "dram": {"capacity_gb": 0},
                                     "storage": {"capacity_gb": 0.1, "path": str(tmp_path / "kv")},
                                     flag: {"capacity_gb": OBJ / 2 / 1e9}}}])
        with pytest.raises(ConfigError, match=rf"^tiers\.{level}\.capacity_gb=0\.000786432 holds no"
                                              r" object \(0\.00157286 GB each\)"):
            open_tiers(cfg.tiers, RankContext(run_id=f"z{level}"), OBJ, one_writer=False,
                       group_bcast=lambda x: x)
    assert not list((tmp_path / "kv").glob("*.slab"))      # the storage tier it opened is closed


def test_a_capped_tier_is_one_line_and_in_the_summary_and_the_device_saw_the_bytes(
        tmp_path: Path, main) -> None:
    """Storage only, on the local disk: a share of free space that holds about 12 objects
    cuts the 1 GB asked, which the console says once and the summary reports; the disks'
    own counters saw at least what the tool wrote and read (O_DIRECT: no page cache)."""
    (tmp_path / "kv").mkdir()
    st = os.statvfs(tmp_path / "kv")
    share = 12 * OBJ / (st.f_bavail * st.f_frsize)
    code, out, err, s = main(tmp_path, *BASE, "--max-requests", "12", "--cache-dir", str(tmp_path / "kv"),
                             "--storage-capacity-gb", "1", "--set", f"tiers.storage.max_free_share={share}",
                             "--set", "io.verify=true")
    assert code == 0, err
    t = s["tiers"]["storage"]
    assert t["capacity_gb_requested"] == 1.0 and 8 <= t["slots"] <= 16   # free space moves a little
    assert t["capacity_gb_used"] == round(t["slots"] * OBJ / 1e9, 6)
    capped = [line for line in err.splitlines() if line.startswith("warning: tiers.")]
    assert len(capped) == 1 and capped[0].startswith(
        f"warning: tiers.storage: 1 GB per rank asked, {t['slots'] * OBJ / 1e9:.3g} GB"
        f" ({t['slots']} objects) used (")
    assert s["verify"]["verdict"] == "pass" and s["verify"]["checked"] > 0
    assert s["verify"]["stamps_checked"] == s["tiers"]["storage"]["read_ops"]

    dev = s["device_io"]
    devices, why = devstats.block_devices(str(tmp_path / "kv"))
    if not devices:
        assert dev["n/a"] == why
        pytest.skip(f"no local block device under the temp dir: {why}")
    assert dev["n/a"] is None and dev["nodes"][0]["devices"] == devices
    assert (dev["tool_read_bytes"], dev["tool_write_bytes"]) == (t["read_bytes"], t["write_bytes"])
    assert t["read_bytes"] > 0 and t["write_bytes"] > 0
    if s["o_direct"]:   # buffered I/O may be served by, or still sit in, the page cache
        assert dev["read_bytes"] >= t["read_bytes"] and dev["write_bytes"] >= t["write_bytes"]
    assert dev["write_ratio"] == round(dev["write_bytes"] / t["write_bytes"], 4)
    assert f"device I/O ({', '.join(devices)}): read {dev['read_bytes'] / 1e9:.3f} GB" in out
    assert (dev["warning"] is not None) == (f"warning: {dev['warning']}" in out) == (
        abs(dev["read_bytes"] - t["read_bytes"]) > 0.05 * (t["read_bytes"] + t["write_bytes"])
        or abs(dev["write_bytes"] - t["write_bytes"]) > 0.05 * (t["read_bytes"] + t["write_bytes"]))


# -- reads of what was never written ----------------------------------------------------
def test_the_stamp_check_catches_holes_truncation_and_stale_buffers(tmp_path: Path) -> None:
    """Without verify: a hole reads zeros, a truncated slab reads short, and a short read
    that leaves the thread's buffer holding the right object (read just before) is caught
    all the same."""
    tier = StorageTier(StorageTier.Params(path=str(tmp_path)), 8 * OBJ, OBJ, level="storage")
    tier.open(RankContext(run_id="stamp"))
    payload = pl.PayloadSource(OBJ, 1, "reuse")
    pool = IOPool([tier], OBJ, 1, payload, verify=False)
    try:
        pool.run([Op(WRITE, key=k, dst=0, dst_slot=k, seq=k + 1) for k in (0, 1, 3)])
        good, hole = pool.run([Op(READ, key=1, src=0, src_slot=1), Op(READ, key=2, src=0, src_slot=2)])
        assert (good.stamp_checked, good.stamp_ok) == (True, True)
        assert (hole.stamp_checked, hole.stamp_ok, hole.read_bytes) == (True, False, OBJ)
        wrong, = pool.run([Op(READ, key=7, src=0, src_slot=3)])       # another object's bytes
        assert not wrong.stamp_ok
        again, = pool.run([Op(READ, key=3, src=0, src_slot=3)])
        assert again.stamp_ok
        os.truncate(tier.path, 2 * OBJ)                                 # slot 3 is cut off
        cut, = pool.run([Op(READ, key=3, src=0, src_slot=3)])
        assert cut.read_bytes == 0 and not cut.stamp_ok
        assert tier.info()["slab_bytes"] == 2 * OBJ < tier.info()["written_end"] == 4 * OBJ
        other, = pool.run([Op(READ, key=1, src=0, src_slot=1, crc=-1)])   # another rank's bytes
        assert not other.stamp_checked
    finally:
        pool.close()
        payload.close()
        tier.close()


@pytest.mark.parametrize("verify", ["false", "true"])
def test_reads_of_lost_writes_fail_the_run_visibly(tmp_path: Path, main, verify: str) -> None:
    """A tier that drops writes after the fourth: with or without verify, the run says so on
    the console in one error line, the summary's verdict is fail, and the exit status is 3."""
    code, out, err, s = main(tmp_path, *BASE, "--max-requests", "12", "--cache-dir", str(tmp_path / "kv"),
                             "--storage-capacity-gb", str(40 * OBJ / 1e9),
                             "--set", "tiers.storage.kind=lossy", "--set", f"io.verify={verify}")
    assert code == 3, err
    v = s["verify"]
    assert v["verdict"] == "fail" and v["stamp_mismatches"] > 0 and v["enabled"] is (verify == "true")
    assert v["slabs_truncated"] == 0                     # full length: the stamps caught it
    assert (v["mismatches"] >= v["stamp_mismatches"]) if verify == "true" else v["mismatches"] == 0
    assert v["stamps_checked"] == s["tiers"]["storage"]["read_ops"]
    assert errors(err) == [f"error: verify: {run_mod.verify_failure(v)}"]
    # ... and that line says the counts, spelled here, not by the function that wrote it
    said = errors(err)[0]
    assert (f"{v['stamp_mismatches']} of {v['stamps_checked']} reads returned a region never"
            " written or truncated") in said
    assert (f"{v['mismatches']} of {v['checked']} verified reads differ" in said) is (verify == "true")
    assert said.endswith("the storage returned wrong data, so its figures do not count")
    assert f"verify fail: {v['checked']} reads checked in full" in out
    assert s["complete"] is True      # the measurement finished; what it read was wrong


def test_device_bytes_match_the_tools_on_a_disk_of_its_own(private_disk: Path, tmp_path: Path,
                                                            main) -> None:
    """On a private loop device the disk's own counters over the measured window agree
    with the bytes the tool counted, within 5% (O_DIRECT; what is left is the file
    system's metadata), and no warning is given."""
    code, out, err, s = main(tmp_path, *BASE, "--max-requests", "12", "--cache-dir",
                             str(private_disk / "kv"), "--storage-capacity-gb", str(30 * OBJ / 1e9))
    assert code == 0, err
    dev, t = s["device_io"], s["tiers"]["storage"]
    loop = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.stat(private_disk).st_dev >> 8}:"
                                             f"{os.stat(private_disk).st_dev & 0xFF}"))
    assert s["o_direct"] is True and dev["nodes"][0]["devices"] == [loop] and loop.startswith("loop")
    assert t["read_bytes"] > 0 and t["write_bytes"] > 0
    assert (dev["tool_read_bytes"], dev["tool_write_bytes"]) == (t["read_bytes"], t["write_bytes"])
    assert t["read_bytes"] <= dev["read_bytes"] <= 1.05 * t["read_bytes"]
    assert t["write_bytes"] <= dev["write_bytes"] <= 1.05 * t["write_bytes"]
    assert dev["warning"] is None and "warning: device I/O" not in out
