"""HBM tier: a torch CUDA tensor on this rank's GPU, or host memory standing in for it.

``device: auto`` uses ``cuda:<local_rank % device_count>`` when torch sees a GPU, so
eight ranks on an eight-GPU node use eight GPUs (the reference only ever used device 0).
Without a GPU, or without torch, the tier is host memory and the result says
``emulated: true``. ``device: cpu`` forces a torch CPU tensor (tests the torch path).

On a torch device (cuda, or cpu for the tests) KV is born where it lives: a new object
is made by ``produce`` on the device (a slice of a device-resident ring of random bytes,
made once by torch's generator, then stamped per 4 KiB block exactly as the host payload
is), not copied from host payload. Copies to and from the host run on a CUDA stream of
the calling I/O thread's own, ``non_blocking``, and the call waits for that stream alone
before it returns: ``io_depth`` copies are in flight, each timed as one operation, and
the GIL is released while the thread waits. A DRAM slot (pinned when torch sees a GPU)
is copied to or from directly (``copy_to``/``copy_from``); anything else bounces through
a pinned ``staging_buffer``, or, for storage reads with ``gds: true`` and kvikio
installed, goes file to device through GPUDirect Storage (``_Gds``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import threading
from collections.abc import Iterator
from typing import Any

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import ALIGN, MASK64, aligned_buffer
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.tiers.dram import HostSlots, device_index, pin, unpin

DEVICES = ("auto", "cuda", "cpu", "emulated")
RING_BYTES = 64 << 20    # device payload ring, as the host one: beyond any compressor's window
WORDS = ALIGN // 8       # 64-bit words per 4 KiB block; a block's stamp is its first three


def signed64(value: int) -> int:
    """``value`` modulo 2**64 as the int64 with the same bits (torch has no uint64 fill)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


class HbmTier(Tier):
    """GPU memory through torch, emulated in host memory when there is no GPU."""

    name = "hbm"

    @dataclasses.dataclass(frozen=True)
    class Params:
        device: str = "auto"
        gds: bool = False     # storage -> HBM through GPUDirect Storage (kvikio), when installed

        def check(self) -> None:
            if self.device not in DEVICES:
                raise ConfigError(f"tiers.hbm.device={self.device!r}: use one of {', '.join(DEVICES)}")

    def open(self, ctx: RankContext) -> None:
        self._torch: Any = None
        self._cuda = False
        self._local = threading.local()
        self._staging: list[tuple[Any, int]] = []
        self._gds: _Gds | None = None
        self._gds_note = "off" if not self.params.gds else "needs a CUDA device"
        self.makes_payload = False
        self.device = self._pick_device(ctx)
        if self.device == "emulated":
            self._mem = HostSlots(self.slots, self.object_bytes)
            return
        import torch

        self._torch = torch
        self._cuda = self.device.startswith("cuda")
        self._index = int(self.device.partition(":")[2] or 0) if self._cuda else -1
        self._buf = torch.empty((self.slots, self.object_bytes), dtype=torch.uint8,
                                device=self.device)
        self._buf.view(-1)[::4096] = 0
        self._open_producer()
        if self._cuda and self.params.gds:
            self._gds, self._gds_note = _Gds.load()
        self._sync()

    def _pick_device(self, ctx: RankContext) -> str:
        want = self.params.device
        if want == "emulated" or (want == "auto" and not os.path.exists("/proc/driver/nvidia")):
            return "emulated"   # no NVIDIA driver: skip the seconds-long torch import
        try:
            import torch
        except ImportError:
            if want == "auto":
                return "emulated"
            raise ConfigError(f"tiers.hbm.device={want}: torch is not installed;"
                              " pip install -e '.[gpu]' or use device: emulated") from None
        if want == "cpu":
            return "cpu"
        if torch.cuda.is_available():
            return f"cuda:{device_index(torch, ctx.local_rank)}"
        if want == "cuda":
            raise ConfigError("tiers.hbm.device=cuda: torch sees no GPU; use device: auto")
        return "emulated"

    def _open_producer(self) -> None:
        """The device payload ring (random once, fresh seed per run) and the slots viewed
        as 64-bit words per 4 KiB block, so ``produce`` is one device copy plus the stamps."""
        torch, obj = self._torch, self.object_bytes
        self._windows = max(2, -(-RING_BYTES // obj))
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        # 64-bit draws over the whole int64 range: every byte uniform, a quarter of the
        # time of drawing bytes one by one
        ring = torch.empty((self._windows, obj // 8), dtype=torch.int64, device=self.device)
        self._ring = ring.random_(-(1 << 63), (1 << 63) - 1, generator=gen).view(torch.uint8)
        self._words = self._buf.view(torch.int64).view(self.slots, obj // ALIGN, WORDS)
        self._offsets = torch.arange(obj // ALIGN, dtype=torch.int64, device=self.device) * ALIGN
        self._next_window = itertools.count()    # next() is atomic: threads take turns
        self.makes_payload = True

    @property
    def emulated(self) -> bool:
        return not self.device.startswith("cuda")

    def _sync(self) -> None:
        if self._cuda:
            self._torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        """Runs the body on this thread's own CUDA stream and waits for that stream only,
        so concurrent threads' copies overlap and each op ends when its bytes are there."""
        if not self._cuda:
            yield
            return
        stream = getattr(self._local, "stream", None)
        if stream is None:
            # this thread's current device becomes the tier's (per thread in CUDA), so
            # entering and leaving the stream never switches to GPU 0, which would make a
            # CUDA context there in every rank
            self._torch.cuda.set_device(self._index)
            stream = self._local.stream = self._torch.cuda.Stream(device=self.device)
        with self._torch.cuda.stream(stream):
            yield
        stream.synchronize()

    def _host(self, buf: Any) -> Any:
        return self._torch.frombuffer(buf, dtype=self._torch.uint8)

    def write(self, slot: int, data: memoryview) -> int:
        if self._torch is None:
            return self._mem.write(slot, data)
        with self._on_stream():
            self._buf[slot].copy_(self._host(data), non_blocking=True)
        return len(data)

    def read(self, slot: int, out: memoryview) -> int:
        if self._torch is None:
            return self._mem.read(slot, out)
        with self._on_stream():
            self._host(out).copy_(self._buf[slot], non_blocking=True)
        return len(out)

    def produce(self, slot: int, key: int, seq: int) -> int:
        """A new object made on the device: the next window of the random ring, then
        (key, seq, offset) in the first three words of every 4 KiB block, the bytes
        ``payload.stamp`` writes, so ``payload.check`` verifies it after any move."""
        window = self._ring[next(self._next_window) % self._windows]
        words = self._words[slot]
        with self._on_stream():
            self._buf[slot].copy_(window, non_blocking=True)
            words[:, 0].fill_(signed64(key))
            words[:, 1].fill_(signed64(seq))
            words[:, 2].copy_(self._offsets, non_blocking=True)
        return self.object_bytes

    def copy_to(self, slot: int, dst: Tier, dst_slot: int) -> int | None:
        """Device to host, straight into ``dst``'s slot when it is host memory (DRAM)."""
        view = dst.host_slot(dst_slot) if self._torch is not None else None
        return None if view is None else self.read(slot, view)

    def copy_from(self, slot: int, src: Tier, src_slot: int) -> int | None:
        """Host to device straight from ``src``'s host slot (DRAM); with GDS, file to
        device from a storage tier's slab (its descriptor ``fd``; slot n at n × object size)."""
        if self._torch is None:
            return None
        view = src.host_slot(src_slot)
        if view is not None:
            return self.write(slot, view)
        own_slab = self._gds is not None and src.level == "storage" and src.location() is not None
        fd = getattr(src, "fd", -1) if own_slab else -1
        if fd < 0:
            return None
        # the slab's name is removed at the end of set-up (``Tier.unlink``); its open
        # descriptor reaches it still, and /proc names the descriptor for cuFile to open
        return self._gds.read(f"/proc/self/fd/{fd}", src_slot * src.object_bytes, self._buf[slot])

    def staging_buffer(self) -> Any:
        """A pinned, page-aligned host buffer of one object (O_DIRECT can use it too), so
        copies that cannot go direct still run at DMA speed; None off CUDA."""
        if not self._cuda:
            return None
        buf = aligned_buffer(self.object_bytes)
        self._staging.append((buf, pin(self._torch, buf, self._index)))
        return buf

    def close(self) -> None:
        if getattr(self, "_torch", None) is None:
            if hasattr(self, "_mem"):
                self._mem.close()
            return
        if self._gds is not None:
            self._gds.close()
            self._gds = None
        self._sync()
        for buf, addr in self._staging:
            if addr:
                unpin(self._torch, addr)
            buf.close()
        self._staging = []
        self._buf = self._ring = self._words = self._offsets = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": self.device, "emulated": self.emulated,
                "produces_on_device": self.makes_payload,
                "payload_ring_bytes": self._windows * self.object_bytes if self.makes_payload else 0,
                "copy_streams": "one per I/O thread" if self._cuda else None,
                "gds": self._gds is not None, "gds_status": self._gds_note}


class _Gds:
    """GPUDirect Storage reads (storage slab -> HBM slot) through kvikio.

    UNTESTED: kvikio needs CUDA and is not installable where this was written; only used
    with ``tiers.hbm.gds: true`` on a CUDA device."""

    def __init__(self, kvikio: Any) -> None:
        self._kvikio = kvikio
        self._files: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> tuple[_Gds | None, str]:
        """(reader, status): None and why when kvikio cannot be imported."""
        try:
            import kvikio
        except ImportError as exc:
            return None, f"kvikio not importable ({exc}); storage reads bounce through pinned memory"
        return cls(kvikio), f"kvikio {getattr(kvikio, '__version__', '?')}, compat_mode={cls._compat(kvikio)}"

    @staticmethod
    def _compat(kvikio: Any) -> str:
        """kvikio's compatibility mode (POSIX instead of cuFile), whichever API it has."""
        for get in (lambda: kvikio.defaults.get("compat_mode"), lambda: kvikio.defaults.compat_mode()):
            try:
                return str(get())
            except Exception:   # an older or newer kvikio: try the other API
                continue
        return "unknown"

    def read(self, path: str, offset: int, dst: Any) -> int:
        with self._lock:
            fh = self._files.get(path)
            if fh is None:
                fh = self._files[path] = self._kvikio.CuFile(path, "r")
        return fh.read(dst, dst.nbytes, offset)

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()

