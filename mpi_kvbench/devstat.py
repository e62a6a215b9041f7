"""The block device's own counters, to tell a noisy neighbour from a noisy device.

A trial that is slow because another job used the same disk looks, from inside the
benchmark, like a slow device. The kernel counts every byte the device moved
(``/sys/dev/block/MAJ:MIN/stat``, sectors of 512 bytes, whoever asked); one rank per
node reads them at the measured phase's start and end, and the summary compares them
with the bytes the node's ranks moved: what the device moved beyond ours is someone
else's (or the file system's own metadata, a few percent at most with O_DIRECT).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SECTOR = 512


@dataclass(frozen=True)
class Sample:
    device: str            # "MAJ:MIN"
    read_bytes: int
    write_bytes: int


def device_of(path: str) -> str | None:
    """The block device holding ``path`` (or its deepest existing folder: a run's scratch
    folder is gone once its files are unlinked), as "MAJ:MIN"; None on tmpfs, overlay, NFS."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return dev if os.path.exists(f"/sys/dev/block/{dev}/stat") else None


def sample(device: str | None) -> Sample | None:
    if device is None:
        return None
    try:
        with open(f"/sys/dev/block/{device}/stat") as fh:
            f = fh.read().split()
    except OSError:
        return None
    return Sample(device, int(f[2]) * SECTOR, int(f[6]) * SECTOR)


def delta(start: Sample | None, end: Sample | None) -> dict | None:
    """What the device moved between two samples."""
    if start is None or end is None or start.device != end.device:
        return None
    return {"device": start.device, "read_bytes": end.read_bytes - start.read_bytes,
            "write_bytes": end.write_bytes - start.write_bytes}
