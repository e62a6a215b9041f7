"""Storage tier: one preallocated slab file per rank, one object per aligned extent.

Why extents in one file rather than a file per object: every object of a run has the
same size, so a slot number maps to a fixed offset, the hierarchy's free list is the
allocator, and the measured work is data transfer (the device), not file creation and
unlinking (the file system's metadata path). The run creates exactly one file per rank,
so tear-down deletes exactly what it made.

The slab is preallocated (``fallocate``), so first writes do not measure block allocation
and a file system filled by someone else fails at set-up, not mid-run. Once every rank
has opened what it needs, the slab's name is removed (``unlink``): the data lives on
through the open descriptor and the kernel frees it however the process ends.

I/O is ``os.preadv``/``os.pwritev`` on page-aligned buffers with ``O_DIRECT``; when the
file system refuses O_DIRECT the tier warns, falls back to buffered I/O and reports
``o_direct: false``. Capacity is the configured size, lowered so that all the ranks that
write one file system together take at most ``max_free_share`` of its free space (the
ranks of a node on a local file system, every rank on a shared one), so a run never
fills the device.

MLA ``one_writer`` mode: the TP group shares one file per group. The group's first rank
(``share="writer"``) creates it and is the only one to write; the others (``"reader"``)
open the same file and read from it, and never delete it. Disaggregated serving reads
another rank's file through ``open_peer``: read-only, never deleted.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import mmap
import os
import warnings
from typing import Any

from mpi_kvbench.context import RankContext, system_dir
from mpi_kvbench.devstats import block_devices, memory_fs
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import ALIGN
from mpi_kvbench.tiers.base import Tier

SHARED_FS = frozenset({"nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "fuse.cephfs",
                       "glusterfs", "fuse.glusterfs", "wekafs", "pvfs2", "orangefs", "9p",
                       "cifs", "smb3", "panfs", "fuse.juicefs", "virtiofs", "daos", "dfuse"})


def fs_type(path: str) -> str:
    """The file system type of the mount that holds ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def preallocate(fd: int, nbytes: int) -> bool:
    """Reserves ``nbytes`` for ``fd`` with fallocate(2); False where the file system cannot
    (glibc's posix_fallocate would instead write every block, which is not preallocation)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fallocate(fd, 0, ctypes.c_int64(0), ctypes.c_int64(nbytes)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def make_dirs(path: str) -> list[str]:
    """Creates ``path`` and returns the directories this call made (deepest last).

    Ranks sharing a parent race to create it; one that lost the race did not make it."""
    missing = []
    probe = os.path.abspath(path)
    while not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    made = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
            made.append(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
    return made


def remove_dirs(made: list[str]) -> None:
    """Removes directories this run made, deepest first, only while they are empty."""
    for d in reversed(made):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            continue
        except OSError:   # not empty: someone else's files are in it
            break


class StorageTier(Tier):
    """A slab file per rank on a local or shared file system, with O_DIRECT."""

    name = "storage"
    shareable = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        path: str = ""              # template; "" = a fresh directory under the temp dir
        o_direct: bool = True
        max_free_share: float = 0.8
        allow_memory: bool = False  # True: a tmpfs/ramfs path is accepted (the figures are RAM)

        def check(self) -> None:
            if not 0 < self.max_free_share <= 1:
                raise ConfigError(
                    f"tiers.storage.max_free_share={self.max_free_share}: use a share in (0, 1]")

    def open(self, ctx: RankContext) -> None:
        shared = self.share != "private"
        base = ctx.expand(self.params.path) if self.params.path else ctx.scratch_dir(shared)
        # this rank's real path: "{rank}/.." and a per-rank symlink resolved as the kernel will
        base = os.path.realpath(base)
        if system_dir(base):
            raise ConfigError(f"tiers.storage.path={self.params.path!r}: rank {ctx.rank}'s path {base}"
                              " is a system directory; choose a directory of your own")
        who = f"group{ctx.group}" if shared else f"rank{ctx.rank}"
        self.path = os.path.join(base, f"kvbench-{ctx.run_id}-{who}.slab")
        self._owner = self.share != "reader"
        self.made_dirs: list[str] = []
        self.memory = memory_fs(base)          # before anything is made (the mount table if none)
        if self.memory and not self.params.allow_memory:
            raise ConfigError(f"tiers.storage.path: {base} is {self.memory} (memory), so the storage"
                              " tier would measure RAM; use a disk-backed path or set"
                              " tiers.storage.allow_memory: true")
        if not self._owner:
            self._open_shared()
        else:
            try:
                self.made_dirs = make_dirs(base)
            except OSError as exc:
                raise ConfigError(f"tiers.storage.path: cannot create {base} ({exc.strerror});"
                                  " choose a writable directory") from None
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
            try:
                self.fd = os.open(self.path, flags, 0o600)   # O_EXCL: never reuse someone's file
            except OSError as exc:
                remove_dirs(self.made_dirs)
                raise ConfigError(f"tiers.storage.path: rank {ctx.rank} cannot create {self.path}"
                                  f" ({exc.strerror}); choose a directory it can write") from None
            self._named = True
            self.o_direct = self.params.o_direct and self._try_direct(flags)
        self.written_end = 0                   # the end of the furthest write: the slab's least size
        self.devices, self.no_device = block_devices(base)
        st = os.statvfs(base)
        free = st.f_bavail * st.f_frsize
        self.fs = fs_type(base)
        # every rank that may write this file system gets an equal part of the safe share
        sharers = ctx.world_size if self.fs in SHARED_FS else ctx.ranks_per_node
        self.capacity_bytes = min(self.capacity_bytes,
                                  int(free * self.params.max_free_share / max(1, sharers)))
        if self.capacity_bytes < self.requested_bytes:
            self.capped = (f"{free / 1e9:.2f} GB free on {base} ({self.fs}), max_free_share"
                           f" {self.params.max_free_share:g} over {sharers} rank(s)")
        if self.slots == 0:
            self.close()
            if self.requested_bytes < self.object_bytes:
                raise ConfigError(
                    f"tiers.storage.capacity_gb={self.requested_bytes / 1e9:g} is less than one"
                    f" object ({self.object_bytes / 1e9:g} GB); give it more capacity")
            raise ConfigError(f"tiers.storage.path: {base} has {free / 1e9:.2f} GB free, too little"
                              f" for one object per rank ({sharers} ranks share it); free space"
                              " or choose another path")
        self.preallocated = False
        if self._owner:
            try:
                self.preallocated = preallocate(self.fd, self.slots * self.object_bytes)
            except OSError as exc:
                self.close()
                raise ConfigError(
                    f"tiers.storage.path: cannot reserve {self.slots * self.object_bytes / 1e9:.2f}"
                    f" GB in {base} ({exc.strerror}); free space, lower"
                    " tiers.storage.capacity_gb or choose another path") from None

    def _open_shared(self) -> None:
        """A reader of a group's shared file: it must exist, created by the group's writer."""
        try:
            self.fd = os.open(self.path, os.O_RDONLY | (os.O_DIRECT if self.params.o_direct else 0))
            self.o_direct = self.params.o_direct
        except FileNotFoundError:
            raise ConfigError(
                f"tiers.storage.path: {self.path} (the TP group's shared file) is not there;"
                " with kv.mla_mode=one_writer the path must be the same for the whole group"
                " (drop {rank} and {local_rank} from it)") from None

    def _try_direct(self, flags: int) -> bool:
        """Reopens with O_DIRECT and proves it with one aligned write, or warns and falls back."""
        try:
            fd = os.open(self.path, (flags & ~os.O_EXCL & ~os.O_CREAT) | os.O_DIRECT)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            fd = -1
        if fd >= 0:
            probe = mmap.mmap(-1, ALIGN)
            try:
                os.pwritev(fd, [probe], 0)
                os.ftruncate(fd, 0)
                os.close(self.fd)
                self.fd = fd
                return True
            except OSError:
                os.close(fd)
            finally:
                probe.close()
        warnings.warn(f"{self.path}: the file system refuses O_DIRECT; storage I/O is buffered"
                      " and the result says o_direct: false", stacklevel=2)
        return False

    def write(self, slot: int, data: memoryview) -> int:
        offset = slot * self.object_bytes
        done = os.pwritev(self.fd, [data], offset)
        while done < len(data):   # a short write is legal; finish it
            done += os.pwritev(self.fd, [data[done:]], offset + done)
        if offset + done > self.written_end:   # a lost race only under-reports: never a false alarm
            self.written_end = offset + done
        return done

    def read(self, slot: int, out: memoryview) -> int:
        return _read_object(self.fd, slot * self.object_bytes, out)

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1
            self.unlink()
            self.cleanup()

    def unlink(self) -> None:
        if getattr(self, "_named", False):
            self._named = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:   # a tmp cleaner was here first
                pass

    def cleanup(self) -> None:
        remove_dirs(self.made_dirs)
        if not self.params.path:   # the run's own scratch root: whoever comes last removes it
            remove_dirs([os.path.dirname(os.path.dirname(self.path))])

    def location(self) -> str:
        return self.path

    def open_peer(self, location: str) -> PeerFile:
        return PeerFile(self.params, self.object_bytes, location, self.o_direct)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "path": self.path, "fs_type": self.fs, "o_direct": self.o_direct,
                "configured_bytes": self.requested_bytes, "preallocated": self.preallocated,
                "group_role": None if self.share == "private" else self.share,
                "memory_backed": self.memory, "devices": self.devices, "no_device": self.no_device,
                # a slab shorter than its furthest write was truncated under the run
                "slab_bytes": os.fstat(self.fd).st_size if getattr(self, "fd", -1) >= 0 else None,
                "written_end": getattr(self, "written_end", 0)}


def _read_object(fd: int, offset: int, out: memoryview) -> int:
    done = os.preadv(fd, [out], offset)
    while 0 < done < len(out):   # a short read is legal; finish it, unless the file ends
        got = os.preadv(fd, [out[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


class PeerFile(Tier):
    """Another rank's slab file, opened read-only (the decode side of disaggregated
    serving reads what a prefill rank wrote). Never written or deleted here."""

    name = "storage"

    def __init__(self, params: Any, object_bytes: int, path: str, o_direct: bool) -> None:
        super().__init__(params, 0, object_bytes, level="storage")
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if o_direct else 0))

    def open(self, ctx: RankContext) -> None:
        pass

    def write(self, slot: int, data: memoryview) -> int:
        raise PermissionError(f"{self.path} is another rank's file: read only")

    def read(self, slot: int, out: memoryview) -> int:
        return _read_object(self.fd, slot * self.object_bytes, out)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
