"""devstats on fake trees: mount lookup, partitions and stacked devices resolved to their
disks, the n/a reasons, the counters and the comparison with the tool's bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpi_kvbench import devstats

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
23 22 0:5 / /dev/shm rw - tmpfs tmpfs rw,size=100k
24 22 253:0 / /data rw - xfs /dev/mapper/vg-data rw
25 22 0:50 / /home rw - nfs4 server:/export/home rw,vers=4.2
26 22 0:60 / /scratch\\040space rw - ext4 /dev/sdd rw
27 22 0:61 / /ovl rw - overlay overlay rw,lowerdir=/a,upperdir=/b
28 24 9:0 / /data/md rw - ext4 /dev/md0 rw
29 24 9:0 / /data/md rw - ramfs none rw
"""


def link(target: Path, name: Path) -> None:
    name.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, name.parent), name)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """sda (partitions sda1, sda2), sdb/sdc (partitions sdb1, sdc1) in md0 (RAID), dm-0 (LVM)
    on md0 and sda2, and nvme0n1 without partitions; /dev/block and /class/block link them."""
    root = tmp_path / "sys"
    dev = root / "devices"
    nodes = {"sda": dev / "pci/block/sda", "sda1": dev / "pci/block/sda/sda1",
             "sda2": dev / "pci/block/sda/sda2", "sdb": dev / "pci/block/sdb",
             "sdb1": dev / "pci/block/sdb/sdb1", "sdc": dev / "pci/block/sdc",
             "sdc1": dev / "pci/block/sdc/sdc1", "md0": dev / "virtual/block/md0",
             "dm-0": dev / "virtual/block/dm-0", "nvme0n1": dev / "pci/block/nvme0n1"}
    numbers = {"sda1": "8:1", "sda": "8:0", "md0": "9:0", "dm-0": "253:0", "nvme0n1": "259:0"}
    for name, path in nodes.items():
        path.mkdir(parents=True)
        (path / "slaves").mkdir()
        if name[-1].isdigit() and name.startswith("sd"):
            (path / "partition").write_text("1\n")
        link(path, root / "class" / "block" / name)
        if name in numbers:
            link(path, root / "dev" / "block" / numbers[name])
    for top, below in (("md0", ("sdb1", "sdc1")), ("dm-0", ("md0", "sda2"))):
        for b in below:
            link(nodes[b], nodes[top] / "slaves" / b)
    return root


def test_partitions_and_stacked_devices_resolve_to_their_disks(sysfs: Path) -> None:
    assert devstats.disks("sda1", str(sysfs)) == ["sda"]
    assert devstats.disks("md0", str(sysfs)) == ["sdb", "sdc"]          # RAID: both members
    assert devstats.disks("dm-0", str(sysfs)) == ["sda", "sdb", "sdc"]  # LVM on RAID and a partition
    assert devstats.disks("nvme0n1", str(sysfs)) == ["nvme0n1"]


def test_mount_of_takes_the_deepest_and_the_last_mounted(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    assert devstats.mount_of("/etc/hosts", str(mi)).point == "/"
    assert devstats.mount_of("/data/x", str(mi)).fstype == "xfs"
    assert devstats.mount_of("/data/md/y", str(mi)).fstype == "ramfs"   # mounted over the md0 one
    m = devstats.mount_of("/scratch space/z", str(mi))
    assert (m.point, m.source) == ("/scratch space", "/dev/sdd")
    assert devstats.mount_of("/datax", str(mi)).point == "/"           # a prefix is not a parent


def test_block_devices_or_why_not(tmp_path: Path, sysfs: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)

    def bd(path: str, dev: tuple[int, int], magic: int = 0xEF53):
        return devstats.block_devices(path, str(sysfs), str(mi), dev=dev, magic=magic)

    assert bd("/etc", (8, 1)) == (["sda"], None)
    assert bd("/data/kv", (253, 0)) == (["sda", "sdb", "sdc"], None)
    devs, why = bd("/home/u", (0, 50))
    assert devs == [] and why.startswith("nfs4 (server:/export/home)") and "network" in why
    devs, why = bd("/ovl/k", (0, 61))
    assert devs == [] and why.startswith("overlay") and "no local block device" in why
    devs, why = bd("/dev/shm/k", (0, 5))                      # by the mount table
    assert devs == [] and why == "tmpfs is memory-backed: no block device"
    devs, why = bd("/etc", (8, 1), magic=0x858458F6)          # by the statfs magic
    assert devs == [] and why.startswith("ramfs is memory-backed")


def test_counters_and_the_window(tmp_path: Path, sysfs: Path) -> None:
    stats = tmp_path / "diskstats"

    def write(sda: tuple[int, int], sdb: tuple[int, int]) -> None:
        stats.write_text(
            f"   8       0 sda 10 0 {sda[0]} 5 20 0 {sda[1]} 7 0 9 12 0 0 0 0\n"
            f"   8       1 sda1 10 0 {sda[0]} 5 20 0 {sda[1]} 7 0 9 12 0 0 0 0\n"
            f"   8      16 sdb 1 0 {sdb[0]} 5 2 0 {sdb[1]} 7 0 9 12\n")

    (sysfs / "block" / "nvme0n1").mkdir(parents=True)    # not in diskstats: the sysfs file
    (sysfs / "block" / "nvme0n1" / "stat").write_text("  4 0 100 3 8 0 300 9 0 5 6\n")
    write((1000, 2000), (0, 0))
    w = devstats.DeviceWindow(["sda", "sdb", "nvme0n1"], diskstats=str(stats), sys_root=str(sysfs))
    w.start()
    write((1000 + 8, 2000 + 2048), (16, 4))
    (sysfs / "block" / "nvme0n1" / "stat").write_text("  5 0 104 3 9 0 300 9 0 5 6\n")
    w.stop()
    r = w.result()
    assert r["devices"] == ["nvme0n1", "sda", "sdb"] and r["n/a"] is None
    assert r["read_bytes"] == (8 + 16 + 4) * 512
    assert r["write_bytes"] == (2048 + 4) * 512
    gone = devstats.DeviceWindow([], "overlay (overlay): no local block device could be resolved")
    gone.start()
    gone.stop()
    assert gone.result()["n/a"].startswith("overlay") and gone.result()["read_bytes"] is None


def test_compare_warns_beyond_five_percent_of_the_tools_bytes() -> None:
    ok = devstats.compare(1_030, 2_000, 1_000, 2_000)
    assert ok["read_ratio"] == 1.03 and ok["write_ratio"] == 1.0 and ok["warning"] is None
    cached = devstats.compare(0, 2_000, 1_000, 2_000)        # reads served by the page cache
    assert cached["read_ratio"] == 0.0 and "read 0 B on the device" in cached["warning"]
    amplified = devstats.compare(0, 4_500, 0, 3_000)          # RAID1/journal: 1.5x the writes
    assert amplified["read_ratio"] is None and amplified["write_ratio"] == 1.5
    assert "write 4,500 B" in amplified["warning"]
    foreign = devstats.compare(200, 3_000, 0, 3_000)          # 200 B read by someone else: 6.7%
    assert foreign["warning"] is not None and foreign["ratio"] == round(3_200 / 3_000, 4)
    assert devstats.compare(100, 3_000, 0, 3_000)["warning"] is None   # 3.3%: within


def test_the_real_machine_answers_for_its_temp_dir(tmp_path: Path) -> None:
    """On this machine: either a list of disks that /proc/diskstats knows, or a reason."""
    devs, why = devstats.block_devices(str(tmp_path))
    assert bool(devs) != bool(why)
    if devs:
        assert set(devstats.read_counters(devs)) == set(devs)
    if os.path.ismount("/dev/shm") and devstats.mount_of("/dev/shm").fstype == "tmpfs":
        assert devstats.memory_fs("/dev/shm") == "tmpfs"
        assert devstats.statfs_magic("/dev/shm") == 0x01021994
