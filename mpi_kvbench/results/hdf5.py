"""The result: ``result.h5`` (everything) and ``summary.json`` (headlines), written by rank 0.

Both are written under a temporary name in the run directory, flushed to the device and
renamed into place, so a reader never sees half a file and a crash (or a full disk) never
leaves a file that looks whole; the temporary file is removed on every way out. The
HDF5 layout (schema version 1) is documented in docs/RESULTS.md.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from mpi_kvbench import SCHEMA_VERSION, __version__
from mpi_kvbench.metrics import EDGES, PERCENTILES
from mpi_kvbench.results.collected import Collected
from mpi_kvbench.results.summary import RunFacts

if TYPE_CHECKING:
    import h5py


def attributes(facts: RunFacts, summary: dict[str, Any], wall_ns: tuple[int, int]) -> dict[str, Any]:
    """The root attributes of result.h5 (docs/RESULTS.md): the run's facts, a few
    headlines, and the measured window in Unix time."""
    return {
        "schema_version": SCHEMA_VERSION, "tool_version": __version__,
        "command_line": facts.command_line, "config_yaml": facts.config_yaml, "seed": facts.seed,
        "run_id": facts.run_id, "run_name": facts.run_name, "complete": summary["complete"],
        "start_time": facts.start_time, "end_time": datetime.now(UTC).isoformat(),
        "measured_start_unix_ns": wall_ns[0], "measured_end_unix_ns": wall_ns[1],
        "world_size": summary["world_size"], "tensor_parallel": facts.tensor_parallel,
        "replicas": facts.replicas, "nodes": facts.nodes, "model": facts.model,
        "mla_mode": facts.mla_mode, "o_direct": summary["o_direct"],
        "hbm_emulated": summary["hbm_emulated"], "payload_mode": facts.payload_mode,
        "workload_info": facts.workload_info,
        "calibration": [c for c in facts.calibration if c],
    }


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then flushed to the
    device and renamed into place (the bytes reach the device before the name says they
    are whole); the temporary file is removed on every way out."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _attribute(value: Any) -> Any:
    """A str or number as itself when HDF5 can hold it (a seed of 2**64 it cannot), else JSON."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        if not isinstance(value, int) or -2**63 <= value < 2**63:
            return value
    return json.dumps(value, default=_plain)


def _strings(group: h5py.Group, name: str, values: list[str]) -> None:
    import h5py

    group.create_dataset(name, data=np.array(values, dtype=h5py.string_dtype()))


def write_hdf5(path: str, data: Collected, attrs: dict[str, Any], summary: dict[str, Any]) -> None:
    """Builds the file in memory, then writes its bytes: a full disk is then one OSError,
    not an HDF5 library left with half-written objects (which crashes at exit). h5py is
    loaded here: only rank 0 writes, and the other ranks save its import (13 MiB each)."""
    import h5py

    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value if key == "complete" else _attribute(value)
        h = f.create_group("histograms")
        h.attrs["unit"] = "ns"
        h.create_dataset("bucket_edges_ns", data=EDGES)
        _strings(h, "names", data.hist_names)
        h.create_dataset("merged", data=data.merged, compression="gzip")
        h.create_dataset("merged_min_ns", data=data.merged_min_ns)
        h.create_dataset("merged_max_ns", data=data.merged_max_ns)
        h.create_dataset("merged_sum_ns", data=data.merged_sum_ns)
        f.attrs["per_rank_detail"] = data.detail
        if data.per_rank is not None:
            h.create_dataset("per_rank", data=data.per_rank, compression="gzip")
        if data.per_rank_count is not None:
            h.create_dataset("per_rank_count", data=data.per_rank_count)
            p = h.create_dataset("per_rank_percentiles_ns", data=data.per_rank_pcts_ns)
            p.attrs["percentiles"] = list(PERCENTILES)
        h.create_dataset("per_rank_min_ns", data=data.per_rank_min_ns)
        h.create_dataset("per_rank_max_ns", data=data.per_rank_max_ns)
        h.create_dataset("per_rank_sum_ns", data=data.per_rank_sum_ns)
        c = f.create_group("counters")
        _strings(c, "names", data.counter_names)
        c.create_dataset("per_rank", data=data.counters)
        c.create_dataset("merged", data=data.counters.sum(axis=0))
        t = f.create_group("timeseries")
        t.attrs["interval_s"] = 1.0
        _strings(t, "names", data.series_names)
        if data.series is not None:
            t.create_dataset("per_rank", data=data.series, compression="gzip")
        if data.series_merged is not None:
            t.create_dataset("merged", data=data.series_merged, compression="gzip")
        r = f.create_group("ranks")
        r.create_dataset("elapsed_ns", data=data.elapsed_ns)
        _strings(r, "environment", [json.dumps(e) for e in data.env])
        _strings(f, "errors", data.errors)
        f.attrs["summary"] = json.dumps(summary, default=_plain)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(image.getbuffer())
    atomic_write(path, write)


def write_summary(path: str, summary: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(summary, fh, indent=2, default=_plain)
            fh.write("\n")
    atomic_write(path, write)


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} in summary.json")
