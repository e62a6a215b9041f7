"""Who this rank is, and the path templates that expand per rank. Free of MPI."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass

#: Where a run never puts files, checked on the real path (symlinks resolved).
UNSAFE_ROOTS = ("/etc", "/usr", "/bin", "/sbin", "/boot", "/proc", "/sys", "/dev", "/lib",
                "/lib32", "/lib64", "/libx32", "/run", "/var/lib", "/var/run", "/snap")


def system_dir(real_path: str) -> bool:
    """``real_path`` (already through ``os.path.realpath``) is / or inside a system folder."""
    return real_path == "/" or any(real_path == root or real_path.startswith(root + "/")
                                   for root in UNSAFE_ROOTS)


@dataclass(frozen=True)
class RankContext:
    """The identity of one rank; tiers and the engine get it instead of reading globals."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node: int = 0
    nodes: int = 1
    group: int = 0          # TP group (data-parallel replica) index
    replicas: int = 1       # number of TP groups
    tp_rank: int = 0        # rank inside its TP group
    tp_size: int = 1
    run_id: str = "run"
    host: str = socket.gethostname()

    @property
    def ranks_per_node(self) -> int:
        return -(-self.world_size // max(1, self.nodes))

    def expand(self, template: str) -> str:
        """Fills {rank}, {local_rank}, {node}, {host}, {group}, {run_id} in a path template."""
        return os.path.expanduser(template.format(
            rank=self.rank, local_rank=self.local_rank, node=self.node, host=self.host,
            group=self.group, run_id=self.run_id))

    def scratch_dir(self, shared: bool = False) -> str:
        """Where a tier with no path puts its files: a fresh directory in the temp dir,
        one per rank, or one per TP group for a file the group shares."""
        leaf = f"group{self.group}" if shared else f"rank{self.rank}"
        return os.path.join(tempfile.gettempdir(), f"mpi_kvbench-{self.run_id}", leaf)
