"""HBM tier: a torch CUDA tensor on this rank's GPU, or host memory standing in for it.

``device: auto`` uses ``cuda:<local_rank % device_count>`` when torch sees a GPU, so
eight ranks on an eight-GPU node use eight GPUs (the reference only ever used device 0).
Without a GPU, or without torch, the tier is host memory and the result says
``emulated: true``. ``device: cpu`` forces a torch CPU tensor (tests the torch path).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.tiers.dram import HostSlots

DEVICES = ("auto", "cuda", "cpu", "emulated")


class HbmTier(Tier):
    """GPU memory through torch, emulated in host memory when there is no GPU."""

    name = "hbm"

    @dataclasses.dataclass(frozen=True)
    class Params:
        device: str = "auto"

        def check(self) -> None:
            if self.device not in DEVICES:
                raise ConfigError(f"tiers.hbm.device={self.device!r}: use one of {', '.join(DEVICES)}")

    def open(self, ctx: RankContext) -> None:
        self._torch = None
        self.device = self._pick_device(ctx)
        if self.device == "emulated":
            self._mem = HostSlots(self.slots, self.object_bytes)
            return
        import torch

        self._torch = torch
        self._buf = torch.empty((self.slots, self.object_bytes), dtype=torch.uint8,
                                device=self.device)
        self._buf.view(-1)[::4096] = 0
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
            return f"cuda:{ctx.local_rank % torch.cuda.device_count()}"
        if want == "cuda":
            raise ConfigError("tiers.hbm.device=cuda: torch sees no GPU; use device: auto")
        return "emulated"

    @property
    def emulated(self) -> bool:
        return not self.device.startswith("cuda")

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def write(self, slot: int, data: memoryview) -> int:
        if self._torch is None:
            return self._mem.write(slot, data)
        self._buf[slot].copy_(self._torch.frombuffer(data, dtype=self._torch.uint8))
        self._sync()
        return len(data)

    def read(self, slot: int, out: memoryview) -> int:
        if self._torch is None:
            return self._mem.read(slot, out)
        self._torch.frombuffer(out, dtype=self._torch.uint8).copy_(self._buf[slot])
        self._sync()
        return len(out)

    def close(self) -> None:
        if self._torch is None:
            self._mem.close()
        else:
            self._buf = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": self.device, "emulated": self.emulated}
