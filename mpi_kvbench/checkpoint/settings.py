"""Checkpoint settings: the ``checkpoint:`` section of a YAML file plus ``--set
checkpoint.KEY=VALUE``, checked field by field like a plug-in's parameters.

Size per rank: ``size_gb``, or, when ``parameters_b`` is given, the model's whole
checkpoint (parameters x ``bytes_per_param`` x ``optimizer_factor``) split evenly over
the ranks. The default factor 7 on 2-byte parameters is 14 bytes per parameter: bf16
weights, an fp32 master copy and two fp32 Adam moments. Sizes are rounded up to whole
4 KiB blocks (every block is stamped, and O_DIRECT moves whole blocks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.params import build_dataclass, choice, non_negative, positive

BLOCK = 4096
MiB = 1 << 20
FADVISE = ("none", "sequential", "dontneed")
TARGETS = ("file", "s3")


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    target: str = "file"                # file | s3
    size_gb: float = 1.0                # per rank (GB = 1e9 bytes)
    parameters_b: float = 0.0           # > 0: size from the model instead (billions of params)
    bytes_per_param: float = 2.0
    optimizer_factor: float = 7.0
    num_buffers: int = 4                # the pool: num_buffers x chunk_mb of memory per rank
    chunk_mb: float = 32.0              # MiB
    generator_threads: int = 1          # dgen-py threads filling the pool
    path: str = ""                      # file target: directory template ("" = temp dir)
    direct: bool = True                 # file target: O_DIRECT (else buffered + fadvise)
    fadvise: str = "none"               # buffered file target: none | sequential | dontneed
    restore: bool = True                # read it back after writing
    verify: bool = False                # check every block's stamp and each chunk's CRC
    calibrate: bool = True              # file target: raw O_DIRECT rate of the path, for the ratio
    calibrate_gb: float = 1.0           # bytes the calibration moves (at most the checkpoint's)
    keep: bool = False                  # leave the checkpoint behind (default: removed)
    results_dir: str = "results"
    run_name: str = ""
    s3: dict = dataclasses.field(default_factory=dict)   # the s3 tier's settings (bucket, ...)

    def check(self) -> None:
        choice(self, "checkpoint", "target", TARGETS)
        choice(self, "checkpoint", "fadvise", FADVISE)
        positive(self, "checkpoint", ("num_buffers", "chunk_mb", "generator_threads",
                                      "bytes_per_param", "optimizer_factor"))
        non_negative(self, "checkpoint", ("size_gb", "parameters_b", "calibrate_gb"))
        if self.chunk_bytes % BLOCK:
            raise ConfigError(f"checkpoint.chunk_mb={self.chunk_mb:g}: give whole 4 KiB blocks"
                              " (a multiple of 1/256 MiB)")
        if self.size_gb == 0 and self.parameters_b == 0:
            raise ConfigError("checkpoint.size_gb: 0 and no parameters_b; give a size")
        if self.num_buffers < 2:
            raise ConfigError(f"checkpoint.num_buffers={self.num_buffers}: give 2 or more, so"
                              " generation overlaps the writes")
        if self.target == "s3" and not self.s3.get("bucket"):
            raise ConfigError("checkpoint.s3.bucket: missing; name an existing bucket")
        if self.direct and self.fadvise != "none":
            raise ConfigError(f"checkpoint.fadvise={self.fadvise}: applies to buffered files"
                              " only; set checkpoint.direct=false or fadvise none")

    @property
    def chunk_bytes(self) -> int:
        return int(self.chunk_mb * MiB)

    @property
    def pool_bytes(self) -> int:
        return self.num_buffers * self.chunk_bytes

    def rank_bytes(self, world_size: int) -> int:
        """This rank's shard, in whole blocks."""
        if self.parameters_b > 0:
            total = self.parameters_b * 1e9 * self.bytes_per_param * self.optimizer_factor
            raw = total / world_size
        else:
            raw = self.size_gb * 1e9
        return max(BLOCK, -(-int(raw) // BLOCK) * BLOCK)


def build(section: dict[str, Any]) -> CheckpointSettings:
    return build_dataclass(CheckpointSettings, section, "checkpoint")
