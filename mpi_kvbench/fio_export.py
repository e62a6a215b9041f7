"""``python -m mpi_kvbench export-fio LOG... --out DIR``: the storage tier's operations of
recorded I/O trace logs as fio iologs (version 2) and a job file, so ``fio DIR/job.fio``
replays them on any machine, without Python.

One job per log (rank), each on its own data file (``--target``, default ``DIR/data``),
reading and writing whole objects at their recorded offsets in their recorded start
order, ``iodepth`` as the recorded ``io_depth``, ``direct=1``. Extents the log reads
before it writes them (the recorded run wrote them before its measured phase) are
written first by separate ``prime-rank<r>`` jobs; the ``rank<r>`` jobs start after them
(``stonewall``), so fio's figures for the ``rank<r>`` jobs are the log's operations only.
"""

from __future__ import annotations

import argparse
import os

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.iotrace import read_meta, read_rows

IOLOG_HEADER = "fio version 2 iolog\n"


def export(logs: list[str], out: str, target: str | None = None, ioengine: str = "libaio"
           ) -> dict[str, int]:
    """Writes ``out``/rank<r>.iolog (+ prime-rank<r>.iolog) and ``out``/job.fio; returns the
    number of reads and writes exported. Refuses to overwrite files it did not make."""
    target = os.path.abspath(target or os.path.join(out, "data"))
    os.makedirs(out, exist_ok=True)
    os.makedirs(target, exist_ok=True)
    jobs, primes, counts = [], [], {"reads": 0, "writes": 0, "primed": 0}
    for position, log in enumerate(logs):
        meta = read_meta(log)
        rank = meta.get("rank", position)
        depth = meta.get("io_depth", 8)
        data = os.path.join(target, f"kvbench-rank{rank}.slab")
        rows = sorted((r for r in read_rows(log) if r.level == "storage"), key=lambda r: r.t_ns)
        written: set[int] = set()
        lines, prime = [], []
        for r in rows:
            if r.write:
                written.add(r.offset)
            elif r.offset not in written:
                written.add(r.offset)
                prime.append(f"{data} write {r.offset} {r.size}\n")
            lines.append(f"{data} {'write' if r.write else 'read'} {r.offset} {r.size}\n")
            counts["writes" if r.write else "reads"] += 1
        counts["primed"] += len(prime)
        head, tail = [IOLOG_HEADER, f"{data} add\n", f"{data} open\n"], [f"{data} close\n"]
        if prime:
            _write_new(os.path.join(out, f"prime-rank{rank}.iolog"), head + prime + tail)
            primes.append(f"[prime-rank{rank}]\nread_iolog={os.path.abspath(out)}/prime-rank{rank}.iolog\n")
        _write_new(os.path.join(out, f"rank{rank}.iolog"), head + lines + tail)
        jobs.append(f"[rank{rank}]\nread_iolog={os.path.abspath(out)}/rank{rank}.iolog\niodepth={depth}\n")
    if jobs:
        jobs[0] = jobs[0].replace("\n", "\nstonewall\n", 1)
    text = ("# made by mpi_kvbench export-fio: the storage operations of "
            + ", ".join(os.path.basename(p) for p in logs) + "\n"
            + f"[global]\nioengine={ioengine}\ndirect=1\nthread\n\n"
            + "\n".join(primes + jobs))
    _write_new(os.path.join(out, "job.fio"), [text])
    return counts


def _write_new(path: str, parts: list[str]) -> None:
    try:
        with open(path, "x") as fh:
            fh.writelines(parts)
    except FileExistsError:
        raise ConfigError(f"export-fio --out: {path} exists; choose an empty directory") from None


def cmd_export_fio(args: argparse.Namespace) -> int:
    counts = export(args.logs, args.out, args.target, args.ioengine)
    print(f"{counts['reads']} reads, {counts['writes']} writes ({counts['primed']} extents primed"
          f" first): fio {os.path.join(args.out, 'job.fio')}")
    return 0
