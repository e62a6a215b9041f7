"""What lies under a storage path: memory or a block device, and that device's own I/O counters.

Why: a benchmark of storage must say when the "storage" it measured was RAM (a tmpfs
scratch directory) and whether the device really moved the bytes the tool counts. The
page cache (buffered I/O), other processes' I/O on the same device, and write
amplification (RAID, a journal) all make the two differ; the kernel's per-device
counters are the independent witness.

* ``memory_fs(path)``: the name of a memory-backed file system (tmpfs, ramfs, ...) under
  ``path``, by the ``statfs`` magic number and the mount table, else None.
* ``block_devices(path)``: the physical disks behind ``path``: its device number
  (``stat``; the mount's source for file systems such as btrfs that report an anonymous
  one) resolved through sysfs, a partition to its disk and a stacked device (dm, md) to
  the disks in its ``slaves`` directory, recursively. None, with the reason, when there
  is no local block device (memory, network, overlay and other virtual file systems).
* ``DeviceWindow``: reads ``/proc/diskstats`` (or ``/sys/block/<disk>/stat``) for those
  disks at the start and end of a window; the difference is bytes read and written
  (the kernel counts 512-byte sectors whatever the device's block size).

Plain functions over file paths (``sys_root``, ``mountinfo``, ``diskstats``), so tests
drive them with fake trees. No MPI here: the run decides which rank reads the counters.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass, field
from typing import Any

SECTOR = 512                       # /proc/diskstats counts 512-byte sectors, always
#: statfs f_type magic numbers of file systems whose data lives in memory (linux/magic.h)
MEMORY_MAGIC = {0x01021994: "tmpfs", 0x858458F6: "ramfs", 0x958458F6: "hugetlbfs"}
MEMORY_FS = frozenset({"tmpfs", "ramfs", "hugetlbfs", "devtmpfs", "rootfs", "shm"})
NETWORK_FS = frozenset({"nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "fuse.cephfs",
                        "glusterfs", "fuse.glusterfs", "wekafs", "pvfs2", "orangefs", "9p", "cifs",
                        "smb3", "panfs", "fuse.juicefs", "virtiofs", "daos", "dfuse"})


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo: the mount that holds a path."""

    point: str
    fstype: str
    source: str


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        text = text.replace(code, chr(int(code[1:], 8)))
    return text


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> Mount | None:
    """The mount holding ``path`` (the longest mount point that contains its real path;
    of equal ones the last mounted, which hides the others)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    try:
        with open(mountinfo) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        if not sep or len(parts) < 5 or len(tail) < 2:
            continue
        point = _unescape(parts[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point)):
            best = Mount(point, tail[0], _unescape(tail[1]))
    return best


def statfs_magic(path: str) -> int | None:
    """``statfs(2)``'s f_type of ``path`` (the first field of struct statfs), or None where
    the call is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(256)      # larger than struct statfs anywhere
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
        return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    except (OSError, AttributeError):
        return None


def memory_fs(path: str, mountinfo: str = "/proc/self/mountinfo", magic: int | None = None
              ) -> str | None:
    """The memory-backed file system type under ``path`` (e.g. "tmpfs"), else None.
    ``magic`` stands in for statfs in tests."""
    magic = statfs_magic(path) if magic is None else magic
    if magic in MEMORY_MAGIC:
        return MEMORY_MAGIC[magic]
    mount = mount_of(path, mountinfo)
    if mount is not None and mount.fstype in MEMORY_FS:
        return mount.fstype
    return None


def _name(sys_root: str, major: int, minor: int) -> str | None:
    link = os.path.join(sys_root, "dev", "block", f"{major}:{minor}")
    return os.path.basename(os.path.realpath(link)) if os.path.exists(link) else None


def disks(name: str, sys_root: str = "/sys") -> list[str]:
    """The physical disks under block device ``name``: a partition's disk, a stacked
    device's slaves (recursively), or ``name`` itself."""
    out: list[str] = []
    seen: set[str] = set()

    def walk(dev: str) -> None:
        if dev in seen:
            return
        seen.add(dev)
        node = os.path.join(sys_root, "class", "block", dev)
        if os.path.exists(os.path.join(node, "partition")):
            walk(os.path.basename(os.path.dirname(os.path.realpath(node))))
            return
        slaves = os.path.join(node, "slaves")
        below = sorted(os.listdir(slaves)) if os.path.isdir(slaves) else []
        if below:
            for s in below:
                walk(s)
        elif dev not in out:
            out.append(dev)

    walk(name)
    return sorted(out)


def block_devices(path: str, sys_root: str = "/sys", mountinfo: str = "/proc/self/mountinfo",
                  dev: tuple[int, int] | None = None, magic: int | None = None
                  ) -> tuple[list[str], str | None]:
    """(the disks behind ``path``, None) or ([], why there are none). ``dev`` and ``magic``
    stand in for stat and statfs in tests."""
    memory = memory_fs(path, mountinfo, magic)
    if memory:
        return [], f"{memory} is memory-backed: no block device"
    mount = mount_of(path, mountinfo)
    if dev is None:
        st = os.stat(path).st_dev
        dev = (os.major(st), os.minor(st))
    name = _name(sys_root, *dev)
    if name is None and mount is not None and mount.source.startswith("/dev/"):
        try:   # btrfs and the like report an anonymous st_dev; the mount names the device
            rdev = os.stat(mount.source).st_rdev
            name = _name(sys_root, os.major(rdev), os.minor(rdev))
        except OSError:
            name = None
    if name is None:
        kind = mount.fstype if mount else "unknown"
        source = f" ({mount.source})" if mount else ""
        if kind in NETWORK_FS:
            why = "a network or shared file system: its device is not on this node"
        else:
            why = "no local block device could be resolved"
        return [], f"{kind}{source}: {why}"
    return disks(name, sys_root), None


def read_counters(devices: list[str], diskstats: str = "/proc/diskstats", sys_root: str = "/sys"
                  ) -> dict[str, tuple[int, int]]:
    """Bytes read and written so far by each device, from /proc/diskstats, else from
    /sys/block/<name>/stat. A device found in neither is left out."""
    want = set(devices)
    out: dict[str, tuple[int, int]] = {}
    try:
        with open(diskstats) as fh:
            for line in fh:
                f = line.split()
                if len(f) >= 10 and f[2] in want:
                    out[f[2]] = (int(f[5]) * SECTOR, int(f[9]) * SECTOR)
    except OSError:
        pass
    for name in want - set(out):
        try:
            with open(os.path.join(sys_root, "block", name, "stat")) as fh:
                f = fh.read().split()
            out[name] = (int(f[2]) * SECTOR, int(f[6]) * SECTOR)
        except (OSError, IndexError, ValueError):
            continue
    return out


@dataclass
class DeviceWindow:
    """The device counters of ``devices`` between ``start()`` and ``stop()``."""

    devices: list[str]
    why_none: str | None = None              # why there are no devices (n/a)
    diskstats: str = "/proc/diskstats"
    sys_root: str = "/sys"
    _start: dict[str, tuple[int, int]] = field(default_factory=dict)
    _end: dict[str, tuple[int, int]] = field(default_factory=dict)

    def start(self) -> None:
        self._start = read_counters(self.devices, self.diskstats, self.sys_root)

    def stop(self) -> None:
        self._end = read_counters(self.devices, self.diskstats, self.sys_root)

    def result(self) -> dict[str, Any]:
        """Bytes the devices read and wrote in the window, or ``n/a`` and why."""
        seen = sorted(set(self._start) & set(self._end))
        if not seen:
            why = self.why_none or f"no counters for {', '.join(self.devices) or 'any device'}"
            return {"devices": [], "read_bytes": None, "write_bytes": None, "n/a": why}
        return {"devices": seen,
                "read_bytes": sum(self._end[d][0] - self._start[d][0] for d in seen),
                "write_bytes": sum(self._end[d][1] - self._start[d][1] for d in seen),
                "n/a": None}


def compare(device_read: int, device_write: int, tool_read: int, tool_write: int,
            tolerance: float = 0.05) -> dict[str, Any]:
    """Device bytes against the tool's own: ratios per direction (None when the tool moved
    nothing that way) and a warning when either direction differs by more than
    ``tolerance`` of all the tool's bytes (so a few foreign reads in a write-only run
    still count, and do not divide by zero)."""
    total = tool_read + tool_write
    pairs = {"read": (device_read, tool_read), "write": (device_write, tool_write)}
    ratio = {op: round(dev / tool, 4) if tool else None for op, (dev, tool) in pairs.items()}
    off = [op for op, (dev, tool) in pairs.items() if abs(dev - tool) > tolerance * total]
    warning = None
    if off and total:
        said = ", ".join(f"{op} {pairs[op][0]:,} B on the device vs {pairs[op][1]:,} B by the tool"
                         for op in off)
        warning = (f"device I/O differs from the tool's storage I/O by more than"
                   f" {tolerance:.0%} ({said}): page cache, other I/O on the device, or write"
                   " amplification")
    return {"read_ratio": ratio["read"], "write_ratio": ratio["write"],
            "ratio": round((device_read + device_write) / total, 4) if total else None,
            "warning": warning}
