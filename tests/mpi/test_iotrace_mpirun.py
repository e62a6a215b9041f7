"""Record an I/O trace log under a real ``mpirun -n 2``, replay it (``replay``, asap, on the
same path) and export it to fio: the replay moves the recorded bytes per tier, the logs
hold every measured operation, and fio replays the storage operations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_mpirun import MPIRUN

from mpi_kvbench.iotrace import read_meta, read_rows

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun: pip install -e '.[mpi]'")
FIO = shutil.which("fio")

OBJ = 16 * 24_576                       # tiny-1b, 16-token chunks: 384 KiB objects
TIERS = ["--model", "tiny-1b", "--chunk-tokens", "16", "--io-depth", "4",
         "--gpu-mem-gb", str((3 * OBJ + 1000) / 1e9), "--cpu-mem-gb", str((6 * OBJ + 1000) / 1e9),
         "--storage-capacity-gb", str((200 * OBJ + 1000) / 1e9),
         "--set", "workload.users=2",
         "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}"]


def mpirun(n: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MPIRUN, "-n", str(n), sys.executable, "-m", "mpi_kvbench", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, dict, dict, list[str]]:
    tmp = tmp_path_factory.mktemp("iotrace")
    cache = str(tmp / "cache" / "{rank}")
    rec = mpirun(2, *TIERS, "--duration", "0", "--max-requests", "4", "--results-dir", str(tmp / "res"),
                 "--run-name", "rec", "--cache-dir", cache, "--io-trace-log", str(tmp / "trace.csv.zst"),
                 cwd=tmp)
    assert rec.returncode == 0, rec.stderr[-3000:]
    logs = [str(tmp / f"trace-rank{r}.csv.zst") for r in (1, 0)]   # any order: the JSON says the rank
    rep = mpirun(2, "replay", *logs, "--cache-dir", cache, "--timing", "asap",
                 "--results-dir", str(tmp / "res"), "--run-name", "rep", cwd=tmp)
    assert rep.returncode == 0, rep.stderr[-3000:]
    load = lambda name: json.loads((tmp / "res" / name / "summary.json").read_text())  # noqa: E731
    return tmp, load("rec"), load("rep"), sorted(logs)


def test_replay_moves_the_recorded_bytes_per_tier(recorded) -> None:
    _, rec, rep, _ = recorded
    assert rep["workload"] == "replay" and rep["world_size"] == 2
    for tier in ("hbm", "dram", "storage"):
        for what in ("read_bytes", "write_bytes", "read_ops", "write_ops"):
            assert rep["tiers"][tier][what] == rec["tiers"][tier][what], (tier, what)
    assert rec["tiers"]["storage"]["read_ops"] > 0 and rec["tiers"]["storage"]["write_ops"] > 0


def test_the_logs_hold_every_measured_operation(recorded) -> None:
    _, rec, _, logs = recorded
    rows = [r for log in logs for r in read_rows(log)]
    assert {read_meta(log)["rank"] for log in logs} == {0, 1}
    for tier in ("hbm", "dram", "storage"):
        for write, what in ((False, "read"), (True, "write")):
            mine = [r for r in rows if r.level == tier and r.write == write]
            assert len(mine) == rec["tiers"][tier][f"{what}_ops"], (tier, what)
            assert sum(r.size for r in mine) == rec["tiers"][tier][f"{what}_bytes"]


@pytest.mark.skipif(FIO is None, reason="fio is not installed (.ci/run installs it with apt-get)")
def test_fio_replays_the_storage_operations(recorded) -> None:
    tmp, _, _, logs = recorded
    out = tmp / "fio"
    done = subprocess.run([sys.executable, "-m", "mpi_kvbench", "export-fio", *logs, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run = subprocess.run([FIO, "--output-format=json", str(out / "job.fio")], capture_output=True,
                         text=True, timeout=300, cwd=tmp)
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = {j["jobname"]: j for j in json.loads(run.stdout[run.stdout.index("{"):])["jobs"]}
    for log in logs:
        rank = read_meta(log)["rank"]
        storage = [r for r in read_rows(log) if r.level == "storage"]
        job = jobs[f"rank{rank}"]
        assert job["error"] == 0
        assert job["read"]["total_ios"] == sum(not r.write for r in storage)
        assert job["write"]["total_ios"] == sum(r.write for r in storage)
    data = out / "data"
    assert sorted(os.listdir(data)) == ["kvbench-rank0.slab", "kvbench-rank1.slab"]
