"""What goes wrong on a real cluster, under a real ``mpirun -n 4``: signals to one rank and
to the launcher, a rank that dies or leaves on an unexpected exception, a stalled device,
a full results file system. Each run must end in bounded time, with the documented exit
status, the result kept where one can be, and no scratch left behind.

The faults come from the ``faulty`` storage plug-in (tests/mpi/plugins), on rank 1 after
a few writes; the runs ask for far more requests than they can serve before the fault,
so only the fault can end them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from test_mpirun import HERE, MPIRUN, SMALL

ROOT = HERE.parent.parent
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun: pip install -e '.[mpi]'")
BOUND_S = 300          # generous: stopping takes seconds, minutes on a machine kept busy


def command(tmp: Path, mode: str, *extra: str, name: str = "f") -> list[str]:
    return ["-m", "mpi_kvbench", *SMALL, "--duration", "0", "--max-requests", "100000",
            "--results-dir", str(tmp / "r"), "--run-name", name,
            "--cache-dir", str(tmp / "c" / "{rank}"), "--gpu-mem-gb", "0", "--cpu-mem-gb", "0",
            "--set", "tiers.storage.kind=faulty", "--set", f"tiers.storage.mode={mode}",
            "--set", f"tiers.storage.marker={tmp / 'marker'}", *extra]


def environment(tmp: Path) -> dict:
    path = os.pathsep.join([str(HERE / "plugins"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HOME": str(tmp / "home")}


def run(tmp: Path, mode: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([MPIRUN, "-n", "4", sys.executable, *command(tmp, mode, *extra)],
                          cwd=tmp, capture_output=True, text=True, timeout=600,
                          env=environment(tmp))
    return proc, time.monotonic() - t0


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def kept(tmp: Path, name: str = "f") -> dict:
    """The partial result: both files, marked incomplete."""
    summary = json.loads((tmp / "r" / name / "summary.json").read_text())
    with h5py.File(tmp / "r" / name / "result.h5") as f:
        assert bool(f.attrs["complete"]) is False
    assert summary["complete"] is False
    return summary


def no_scratch(tmp: Path) -> None:
    assert not list((tmp / "c").rglob("*")), "scratch left behind"
    assert not list((tmp / "r").rglob(".*tmp-*")), "a temporary result file left behind"


@pytest.mark.parametrize("sig", ["sigterm", "sigint", "sighup"])
def test_a_signal_to_one_rank_ends_the_run_in_order(tmp_path: Path, sig: str) -> None:
    proc, took = run(tmp_path, sig, "--set", "tiers.storage.fail_after=20")   # some requests done
    signum = getattr(signal, sig.upper())
    assert proc.returncode == 128 + signum, proc.stderr[-2000:]
    assert took < BOUND_S
    assert "Traceback" not in proc.stderr
    summary = kept(tmp_path)
    assert any(f"stopped by {sig.upper()}" in e for e in summary["errors"])
    assert summary["requests_completed"] > 0          # what was measured is kept
    no_scratch(tmp_path)


def default_hangup() -> None:
    """A launcher started under nohup inherits SIGHUP ignored, and a shell cannot trap a
    signal ignored on entry: these tests start it as a terminal would."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def launch(tmp: Path, argv: list[str], env: dict | None = None) -> tuple[subprocess.Popen, float]:
    """Starts the run in a process group of its own, waits until rank 1 has made the
    marker (it is well inside the measured phase then), and returns the launcher."""
    proc = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**environment(tmp), **(env or {})},
                            start_new_session=True, preexec_fn=default_hangup)
    t0 = time.monotonic()
    while not (tmp / "marker").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < 600, "the run never reached its fifth write"
        time.sleep(0.05)
    return proc, time.monotonic()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_mpirun_ends_the_run_in_order(tmp_path: Path, sig: int) -> None:
    proc, t0 = launch(tmp_path, [MPIRUN, "-n", "4", sys.executable, *command(tmp_path, "mark")])
    # the slabs have no name while the run goes on: a tmp cleaner finds nothing to delete
    assert not list((tmp_path / "c").rglob("*.slab"))
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, stderr[-2000:]
    assert time.monotonic() - t0 < BOUND_S
    assert "Traceback" not in stderr
    kept(tmp_path)
    no_scratch(tmp_path)


@pytest.mark.parametrize("how", ["hangup of the script", "SIGTERM to the process group"])
def test_the_launcher_script_turns_a_hangup_or_a_group_kill_into_one_stop(tmp_path: Path,
                                                                           how: str) -> None:
    argv = ["bash", str(ROOT / "launch" / "mpirun.sh"), "4", *command(tmp_path, "mark")[2:]]
    proc, t0 = launch(tmp_path, argv, {"MPIRUN": MPIRUN, "PYTHON": sys.executable})
    if how.startswith("hangup"):
        proc.send_signal(signal.SIGHUP)
    else:   # the script, mpirun and the ranks all get it (Slurm's scancel, a closed session)
        os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]   # README: HUP -> TERM
    assert time.monotonic() - t0 < BOUND_S
    assert "again: leaving at once" not in stderr     # copies of one signal count once
    kept(tmp_path)
    no_scratch(tmp_path)


def test_a_rank_that_dies_ends_the_job_and_leaves_no_scratch(tmp_path: Path) -> None:
    proc, took = run(tmp_path, "exit")
    assert proc.returncode != 0
    assert took < BOUND_S
    no_scratch(tmp_path)          # the slabs had no name: the kernel freed them


def test_an_interrupt_in_an_io_thread_is_a_rank_failure(tmp_path: Path) -> None:
    proc, took = run(tmp_path, "interrupt")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert took < BOUND_S
    assert len(errors(proc)) == 1 and "KeyboardInterrupt" in errors(proc)[0]
    assert "rank 1" in kept(tmp_path)["errors"][0]
    no_scratch(tmp_path)


def test_the_watchdog_ends_a_stalled_run(tmp_path: Path) -> None:
    proc, took = run(tmp_path, "stall", "--set", "run.watchdog_s=2")
    # every rank returns 1; the stalled rank leaves first (its stuck thread cannot be
    # joined), and MPICH's mpirun may then kill the others mid-teardown and report 9
    assert proc.returncode in (1, 9), proc.stderr[-2000:]
    assert took < BOUND_S
    line = errors(proc)
    assert len(line) == 1 and "rank 1" in line[0] and "watchdog" in line[0]
    assert "storage write" in line[0]
    assert "watchdog" in kept(tmp_path)["errors"][0]
    no_scratch(tmp_path)


def test_a_failing_close_does_not_lose_the_result(tmp_path: Path) -> None:
    proc, took = run(tmp_path, "close_error", "--max-requests", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: rank 1: closing storage: ValueError" in proc.stderr
    assert json.loads((tmp_path / "r" / "f" / "summary.json").read_text())["complete"] is True
    no_scratch(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_results_file_system_keeps_the_numbers(tmp_path: Path) -> None:
    full = tmp_path / "r"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(full)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc, took = run(tmp_path, "enospc", "--max-requests", "2",
                         "--set", "tiers.storage.fail_after=100000")
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "requests" in proc.stdout and "GB/s" in proc.stdout     # the table was printed
    fallback = [p for p in (tmp_path / "home").glob("mpi_kvbench-*") if p.is_dir()]
    assert len(fallback) == 1
    assert any(str(fallback[0]) in line for line in errors(proc))  # the error line names it
    summary = json.loads((fallback[0] / "summary.json").read_text())
    assert summary["complete"] is True and summary["requests_completed"] == 4 * 2
    with h5py.File(fallback[0] / "result.h5") as f:
        assert f.attrs["run_name"] == "f"
    no_scratch(tmp_path)
