"""The pieces that keep a failing run from losing data or hanging, one process each: the
signal handler, the watchdog, nameless and preallocated slabs, the result-path checks,
inputs refused at set-up, and a result file that survives what HDF5 cannot store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from engine_rig import make_config, request

from mpi_kvbench import cli
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine.serve import Stalled
from mpi_kvbench.interrupt import Interrupts
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.mpi.reduce import _trim
from mpi_kvbench.results.hdf5 import _attribute
from mpi_kvbench.run import check_result_path
from mpi_kvbench.tiers.storage import StorageTier

OBJ = 1 << 20


def test_the_first_signal_only_asks_to_stop() -> None:
    before = signal.getsignal(signal.SIGHUP)   # SIG_IGN under nohup
    signals = Interrupts().install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert signals.received == signal.SIGHUP
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGHUP) == before


def test_a_second_signal_removes_scratch_and_leaves_at_once(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch.slab"
    scratch.write_text("x")
    code = (f"import os, signal, time\nfrom mpi_kvbench.interrupt import Interrupts\n"
            f"s = Interrupts(leave=lambda: os.unlink({str(scratch)!r})).install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\nassert s.received == signal.SIGTERM\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"            # a copy of the first: ignored
            "assert os.path.exists(" + repr(str(scratch)) + ")\n"
            "time.sleep(1.1)\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(60)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert proc.stderr.strip().splitlines() == ["error: SIGTERM again: leaving at once"]
    assert not scratch.exists()


def test_the_watchdog_names_the_stalled_tier(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, storage=8, run={"watchdog_s": 0.3}))
    release = threading.Event()
    storage = r.tiers[-1]
    real_write = storage.write

    def stuck(slot, data):
        release.wait()
        return real_write(slot, data)

    storage.write = stuck
    t0 = time.monotonic()
    try:
        with pytest.raises(Stalled, match=r"storage write \(slot \d+\).*run\.watchdog_s=0\.3"):
            r.engine.serve(request(0, [(1, 64)]))
        assert time.monotonic() - t0 >= 0.3          # not before its time
        assert r.engine.stalled
    finally:
        release.set()


def test_the_watchdog_names_a_stalled_delete(tmp_path: Path, rig) -> None:
    """A tier that deletes (object storage) can stall in ``drop``: the watchdog names it
    like any other operation (it used to fail on a KeyError for the kind)."""
    r = rig(make_config(tmp_path, storage=4, run={"watchdog_s": 0.3}))
    release = threading.Event()
    storage = r.tiers[-1]
    r.engine.serve(request(0, [(1, 64)]))          # fills the tier: the next request evicts
    storage.deletes = True
    storage.drop = lambda slot: release.wait()
    try:
        with pytest.raises(Stalled, match=r"storage delete \(slot \d+\).*run\.watchdog_s=0\.3"):
            r.engine.serve(request(1, [(2, 64)]))
        assert r.engine.stalled
    finally:
        release.set()


def test_no_watchdog_when_it_is_off(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, storage=8, run={"watchdog_s": 0}))
    storage = r.tiers[-1]
    real_write = storage.write
    storage.write = lambda slot, data: (time.sleep(0.3), real_write(slot, data))[1]
    r.engine.serve(request(0, [(1, 64)]))
    assert not r.engine.stalled and r.c["storage.write_ops"] > 0


def storage(tmp_path: Path, objects: int) -> StorageTier:
    tier = StorageTier(StorageTier.Params(path=str(tmp_path / "kv")), objects * OBJ, OBJ,
                       level="storage")
    tier.open(RankContext(run_id="fail"))
    return tier


def test_the_slab_is_preallocated_then_nameless_and_close_tolerates_that(tmp_path: Path) -> None:
    tier = storage(tmp_path, 8)
    try:
        st = os.fstat(tier.fd)
        assert st.st_size == 8 * OBJ and st.st_blocks * 512 >= 8 * OBJ   # reserved, not sparse
        assert tier.info()["preallocated"] is True
        tier.unlink()
        assert not list((tmp_path / "kv").iterdir())       # nothing a cleaner could delete
        buf = aligned_buffer(OBJ)   # O_DIRECT wants page-aligned memory
        assert tier.write(3, buf) == OBJ                   # ... and the data lives on
    finally:
        tier.close()
    assert not (tmp_path / "kv").exists()                  # the folder it made is gone too


def test_a_slab_removed_by_someone_else_does_not_break_close(tmp_path: Path) -> None:
    tier = storage(tmp_path, 2)
    os.unlink(tier.path)
    tier.close()
    assert not (tmp_path / "kv").exists()


def test_trim_of_a_run_that_recorded_nothing() -> None:
    assert _trim(np.zeros((4, 0, 0))) == 0
    series = np.zeros((2, 3, 5))
    series[1, 2, 3] = 1.0
    assert _trim(series) == 4


def test_numbers_hdf5_cannot_hold_are_kept_as_text(tmp_path: Path) -> None:
    assert _attribute(2**64) == "18446744073709551616"
    assert _attribute(2**63 - 1) == 2**63 - 1 and _attribute("x") == "x"
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.attrs["seed"] = _attribute(2**64)
    with h5py.File(tmp_path / "a.h5") as f:
        assert json.loads(f.attrs["seed"]) == 2**64


@pytest.mark.parametrize("make, words", [
    (lambda d: (d / "taken").mkdir() or (d / "taken" / "summary.json").write_text("{}"),
     "already holds a result"),
    (lambda d: (d / "taken").write_text("a file"), "is a file"),
])
def test_the_result_path_is_checked_before_the_run(tmp_path: Path, make, words) -> None:
    make(tmp_path)
    err = check_result_path(str(tmp_path / "taken"))
    assert err is not None and words in str(err)
    assert check_result_path(str(tmp_path / "fresh" / "deeper")) is None
    (tmp_path / "file").write_text("x")
    assert "run.results_dir" in str(check_result_path(str(tmp_path / "file" / "run")))


def cli_error(capsys, *argv: str) -> str:
    t0 = time.monotonic()
    status = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert time.monotonic() - t0 < 30
    return err[0]


def test_bad_run_names_are_refused(tmp_path: Path, capsys) -> None:
    base = ["--results-dir", str(tmp_path), "--duration", "0", "--max-requests", "1"]
    assert "at most 200" in cli_error(capsys, *base, "--run-name", "n" * 201)
    assert "NUL" in cli_error(capsys, *base, "--set", "run.run_name=a\0b")
    (tmp_path / "file").write_text("mine")
    assert "is a file" in cli_error(capsys, *base, "--run-name", "file")
    assert (tmp_path / "file").read_text() == "mine"


def mooncake(tmp_path: Path, records: list[dict]) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_a_record_too_large_to_serve_is_refused_at_set_up(tmp_path: Path, capsys) -> None:
    trace = mooncake(tmp_path, [{"timestamp": 0, "input_length": 100, "output_length": 1,
                                 "hash_ids": [1]},
                                {"timestamp": 1, "input_length": 2_000_000_000,
                                 "output_length": 1, "hash_ids": [2]}])
    line = cli_error(capsys, "--workload", "mooncake", "--trace", trace, "--results-dir",
                     str(tmp_path / "r"), "--duration", "0")
    assert "record 2" in line and "workload.max_request_tokens" in line
    assert not (tmp_path / "r").exists()


def test_more_users_than_a_run_can_set_up_are_refused(tmp_path: Path, capsys) -> None:
    line = cli_error(capsys, "--users", "100000000", "--results-dir", str(tmp_path))
    assert "workload.users" in line


def test_a_trace_of_years_needs_a_limit(tmp_path: Path, capsys) -> None:
    year_ms = 365 * 86400 * 1000
    trace = mooncake(tmp_path, [{"timestamp": t, "input_length": 100, "output_length": 1,
                                 "hash_ids": [i]} for i, t in enumerate((0, year_ms))])
    line = cli_error(capsys, "--workload", "mooncake", "--trace", trace, "--results-dir",
                     str(tmp_path / "r"), "--duration", "0", "--model", "tiny-1b",
                     "--set", "tiers.storage.kind=null")
    assert "days" in line and "--trace-speedup" in line
    # with a limit the same trace is a run
    status = cli.main(["--workload", "mooncake", "--trace", trace, "--results-dir",
                       str(tmp_path / "r"), "--duration", "0", "--trace-speedup", "1e9",
                       "--model", "tiny-1b", "--set", "tiers.storage.kind=null"])
    assert status == 0
