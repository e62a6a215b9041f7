"""What a user sees and keeps: rank 0's live lines (present in a real run's captured
stdout, absent with --quiet), a summary.json that says what ran, non-hbm plug-ins at
the HBM level and all-null tiers, the launch check, shipped configs by name, --help with
defaults, and the launch scripts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from mpi_kvbench import cli as cli_mod
from mpi_kvbench import config
from mpi_kvbench import run as run_mod
from mpi_kvbench.mpi.comm import TASK_COUNT_VARS, SerialComm

ROOT = Path(__file__).resolve().parents[2]
OBJ = 16 * 24_576      # tiny-1b, 16-token chunks
TINY = ["--model", "tiny-1b", "--chunk-tokens", "16", "--duration", "0", "--io-depth", "4",
        "--gpu-mem-gb", str(4 * OBJ / 1e9), "--cpu-mem-gb", str(8 * OBJ / 1e9),
        "--storage-capacity-gb", str(40 * OBJ / 1e9)]
LAUNCH_VARS = (*TASK_COUNT_VARS, "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env | extra


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpi_kvbench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env or clean_env())


def in_process(tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
               *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(run_mod, "world", SerialComm)
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    capsys.readouterr()
    code = cli_mod.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def garbage_trace(path: Path, rows: int = 6) -> Path:
    good = "".join(f"{i},ChatGPT,{40 + i},8,{48 + i},Conversation log\n" for i in range(rows))
    path.write_bytes(b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     + good.encode() + b"7,a\rb,1\n" + b"8,ChatGPT\n")   # binary junk, a short row
    return path


# ---- a real run: live lines, the legend, a self-contained summary -------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One process, stdout a pipe (not a terminal): a null plug-in at the HBM level, a
    pre-conditioned storage tier, a warm-up, four requests."""
    tmp = tmp_path_factory.mktemp("visible")
    proc = cli(tmp, *TINY, "--results-dir", str(tmp / "res"), "--run-name", "r",
               "--cache-dir", str(tmp / "kv" / "{rank}"), "--max-requests", "4",
               "--precondition", "0.5", "--set", "run.warmup_s=0.05", "--set", "workload.users=2",
               "--set", "tiers.hbm.kind=null", "--set", "workload.templates={chatbot: 1, coding: 0,"
               " document: 0}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp


def test_live_lines_in_a_real_run(real_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, tmp = real_run
    live = [line[2:] for line in proc.stdout.splitlines() if line.startswith("> ")]
    # every phase, in order, before the table
    order = ["set-up: ", "mpi_kvbench 0.", "tier hbm: ", "tier dram: ", "tier storage: ",
             "results: ", "preconditioning: ", "warm-up: ", "measured phase: started",
             "measured phase: done"]
    found, at = {}, 0
    for prefix in order:
        at = next(i for i in range(at, len(live)) if live[i].startswith(prefix))
        found[prefix] = live[at]
    assert found["tier hbm: "].startswith(f"tier hbm: null, {4 * OBJ / 1e9:.3f} GB per rank")
    storage = found["tier storage: "]
    assert f"at {tmp / 'kv' / '0'}/" in storage and storage.endswith(")")   # path (fs type)
    banner = found["mpi_kvbench 0."]
    assert "1 ranks on 1 node(s)" in banner and "model tiny-1b" in banner
    assert f"results: {tmp / 'res' / 'r'};" in found["results: "]
    assert proc.stdout.index("> measured phase: done") < proc.stdout.index("\nmpi_kvbench 0.")  # table after
    assert f"result: {tmp / 'res' / 'r'}/result.h5" in proc.stdout
    assert "\r" not in proc.stdout                     # not a terminal: whole lines


def test_the_legend_explains_question_marks(real_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, _ = real_run
    assert "?" in proc.stdout.split("storage health")[1]          # four requests: too few to judge
    assert "'?' = too few samples" in proc.stdout and "NOT ENOUGH SAMPLES =" in proc.stdout
    readme = (ROOT / "README.md").read_text()
    assert "NOT ENOUGH SAMPLES" in readme and "too few samples" in readme


def findmnt(path: Path) -> str | None:
    exe = shutil.which("findmnt")
    if not exe:
        return None
    out = subprocess.run([exe, "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True)
    return out.stdout.strip() or None


def test_summary_json_says_what_ran(real_run: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, tmp = real_run
    s = json.loads((tmp / "res" / "r" / "summary.json").read_text())
    p = s["provenance"]
    assert "--precondition 0.5" in p["command_line"] and "tiers.hbm.kind=null" in p["command_line"]
    cfg = p["config"]                                   # every setting in force
    assert cfg["io"]["io_depth"] == 4 and cfg["kv"]["chunk_tokens"] == 16
    assert cfg["tiers"]["hbm"]["kind"] == "null" and cfg["run"]["precondition"] == 0.5
    assert cfg["workload"]["users"] == 2 and "system_prompts" in cfg["workload"]   # plug-in defaults too
    assert cfg == yaml.safe_load(config.load(None, [{"io": {"io_depth": 4}}]).text) | cfg  # same keys
    start, end = datetime.fromisoformat(p["start_utc"]), datetime.fromisoformat(p["end_utc"])
    assert start.utcoffset().total_seconds() == 0 and start < end
    assert p["hosts"] == [socket.gethostname()]
    assert p["tool_version"] == s["tool_version"] and p["packages"]["pyyaml"]
    assert p["tiers"]["hbm"]["kind"] == ["null"]
    assert p["tiers"]["dram"]["capacity_gb_per_rank"] == [round(8 * OBJ / 1e9, 6)]
    st = p["tiers"]["storage"]
    assert len(st["paths"]) == 1 and st["paths"][0].startswith(str(tmp / "kv" / "0") + "/")
    assert not Path(st["paths"][0]).exists()            # removed at the end, named in the result
    fs = findmnt(tmp)
    if fs:
        assert st["fs_types"] == [fs]
    assert s["hbm_emulated"] is None and s["o_direct"] in (True, False)


# ---- in-process: --quiet, all-null tiers, skipped trace rows -------------------------------


def test_quiet_and_all_null_tiers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Trace mode's basis: every level a null tier. --quiet: the table only, no live line."""
    trace = garbage_trace(tmp_path / "t.csv")
    args = [*TINY, "--results-dir", str(tmp_path / "res"), "--workload", "burstgpt",
            "--trace", str(trace), "--trace-speedup", "1000", "--set", "tiers.hbm.kind=null",
            "--set", "tiers.dram.kind=null", "--set", "tiers.storage.kind=null"]
    code, out, err = in_process(tmp_path, capsys, monkeypatch, *args, "--run-name", "q", "--quiet")
    assert code == 0, err
    assert not [line for line in out.splitlines() if line.startswith("> ")], out
    assert "storage throughput" in out
    s = json.loads((tmp_path / "res" / "q" / "summary.json").read_text())
    assert s["complete"] and s["hbm_emulated"] is None and s["o_direct"] is None
    assert s["provenance"]["tiers"]["storage"]["kind"] == ["null"]
    assert s["requests_completed"] == 6
    # the same run without --quiet says which rows it skipped and why
    code, out, err = in_process(tmp_path, capsys, monkeypatch, *args, "--run-name", "v")
    assert code == 0, err
    assert f"> trace: reading {trace}" in out
    assert "> trace rows skipped: 1 x a row that is not CSV text, 1 x a row with missing fields" in out


@pytest.mark.parametrize("kind", ["dram", "storage"])
def test_other_plugins_at_the_hbm_level(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    code, out, err = in_process(tmp_path, capsys, monkeypatch, *TINY, "--max-requests", "2",
                                "--results-dir", str(tmp_path / "res"), "--run-name", "h",
                                "--cache-dir", str(tmp_path / "kv"), "--quiet",
                                "--set", f"tiers.hbm.kind={kind}", "--set", "workload.users=1")
    assert code == 0, err
    s = json.loads((tmp_path / "res" / "h" / "summary.json").read_text())
    assert s["complete"] and s["hbm_emulated"] is None
    assert s["provenance"]["tiers"]["hbm"]["kind"] == [kind]
    assert s["o_direct"] is not None                     # a file-backed tier is somewhere
    assert s["tiers"]["hbm"]["write_ops"] > 0


# ---- the launch check ---------------------------------------------------------------------


def test_a_one_rank_world_under_four_slurm_tasks_is_refused(tmp_path: Path) -> None:
    """A real process, a real (singleton) MPI world of one rank, SLURM_NTASKS=4."""
    pytest.importorskip("mpi4py")
    proc = cli(tmp_path, *TINY, "--max-requests", "1", "--results-dir", str(tmp_path / "res"),
               env=clean_env(SLURM_NTASKS="4"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: launch: SLURM_NTASKS=4"), proc.stderr
    assert "srun --mpi=pmix" in lines[0]
    assert not (tmp_path / "res").exists() and "Traceback" not in proc.stderr


def test_the_launch_check_reads_the_closest_launcher() -> None:
    from mpi_kvbench.errors import ConfigError
    from mpi_kvbench.mpi.comm import check_launch

    check_launch(1, {})
    check_launch(1, {"SLURM_NTASKS": "8", "PMI_SIZE": "1"})      # mpirun -n 1 inside a job
    check_launch(4, {"SLURM_NTASKS": "4"})                         # connected
    check_launch(1, {"SLURM_NTASKS": "4", "MPI_KVBENCH_IGNORE_LAUNCH": "1"})
    for env, fix in (({"OMPI_COMM_WORLD_SIZE": "2"}, "mpirun"), ({"PMI_SIZE": "3"}, "mpirun"),
                     ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "1"}, "srun --mpi=")):
        with pytest.raises(ConfigError, match=fix):
            check_launch(1, env)


# ---- shipped configs, help -------------------------------------------------------------------


def test_shipped_configs_by_name_outside_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(config.shipped_configs()) == shipped
    assert "configs/*.yaml" in (ROOT / "setup.cfg").read_text()     # in the wheel
    monkeypatch.chdir(tmp_path)                                     # no configs/ here
    by_name = config.load("mlperf-option1", [{"tiers": {"storage": {"path": str(tmp_path)}}}])
    by_path = config.load(str(ROOT / "configs" / "mlperf-option1.yaml"),
                          [{"tiers": {"storage": {"path": str(tmp_path)}}}])
    assert by_name.text == by_path.text and by_name.model.name == "llama3.1-8b"
    code, out, _ = in_process(tmp_path, capsys, monkeypatch, "configs")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == shipped
    assert "MLPerf Storage v3 KV-cache, option 1" in out
    (tmp_path / "mlperf-option1").write_text("run:\n  seed: 5\n")   # a file of that name wins
    assert config.load("mlperf-option1").run.seed == 5
    code, _, err = in_process(tmp_path, capsys, monkeypatch, "--config", "mlperf-opton1")
    assert code == 2 and "did you mean 'mlperf-option1'" in err


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_mod.main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    d = config.default_dict()
    assert f"concurrent I/O per rank (default {d['io']['io_depth']})" in out
    assert f"measured phase length (default {d['run']['duration_s']})" in out
    assert f"storage tier per rank (default {d['tiers']['storage']['capacity_gb']})" in out
    assert f"model key (see `models`) (default {d['model']['name']})" in out


def test_help_and_version_print_only_on_rank_0(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for rank, expect in (("0", True), ("1", False)):
        monkeypatch.setenv("PMI_RANK", rank)
        for args in (["--version"], ["--help"], ["run", "--help"]):
            assert cli_mod.main(args) == 0
            out = capsys.readouterr().out
            assert bool(out) is expect, (rank, args, out)


# ---- launch scripts ---------------------------------------------------------------------------


def test_mpirun_sh_refuses_zero_ranks(tmp_path: Path) -> None:
    for n in ("0", "00"):
        proc = subprocess.run(["bash", str(ROOT / "launch" / "mpirun.sh"), n, "--max-requests", "1"],
                              capture_output=True, text=True, env=clean_env(MPIRUN="echo mpirun"))
        assert proc.returncode == 2 and proc.stderr.startswith("error: RANKS="), proc.stderr
        assert proc.stdout == ""
    proc = subprocess.run(["bash", str(ROOT / "launch" / "mpirun.sh"), "3", "--seed", "1"],
                          capture_output=True, text=True, env=clean_env(MPIRUN="echo mpirun"))
    assert proc.stdout.split() == ["mpirun", "-n", "3", "python", "-m", "mpi_kvbench", "run",
                                   "--seed", "1"]


FAKE_SRUN = """#!{python}
import json, os, signal, sys, pathlib
out = pathlib.Path(os.environ["FAKE_OUT"])
done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
(out / "args.json").write_text(json.dumps(sys.argv[1:]))
if os.environ.get("FAKE_WAIT"):
    (out / "ready").write_text("")
    while not done:
        signal.pause()
    (out / "term").write_text("")
"""


def sbatch(tmp: Path, wait: bool = False, **env: str) -> subprocess.Popen:
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (fake / "srun").chmod(0o755)
    e = clean_env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_OUT=str(tmp),
                  SLURM_SUBMIT_DIR=str(tmp), SLURM_JOB_ID="78", SLURM_NTASKS="8",
                  SLURM_NTASKS_PER_NODE="8", SLURM_GPUS_ON_NODE="8", SLURM_JOB_NUM_NODES="1", **env)
    if wait:
        e["FAKE_WAIT"] = "1"
    return subprocess.Popen(["bash", str(ROOT / "launch" / "slurm" / "kvbench.sbatch")], cwd="/",
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sbatch_script_array_trials_absolute_paths_and_signal(tmp_path: Path) -> None:
    text = (ROOT / "launch" / "slurm" / "kvbench.sbatch").read_text()
    assert "#SBATCH --signal=B:TERM@120" in text
    proc = sbatch(tmp_path, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_JOB_ID="77", KV_RESULTS="out",
                  KV_CONFIG="mlperf-option1")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    args = json.loads((tmp_path / "args.json").read_text())
    assert args[:2] == ["--mpi=pmix", "--cpu-bind=cores"]
    assert args[2:6] == ["python", "-m", "mpi_kvbench", "run"]
    flags = dict(zip(args[6::2], args[7::2], strict=False))
    assert flags["--results-dir"] == str(tmp_path / "out")          # absolute, from the submit dir
    assert (tmp_path / "out").is_dir()
    assert flags["--run-name"] == "slurm-77-trial3" and flags["--seed"] == "3"
    assert flags["--config"] == "mlperf-option1"
    assert f"log {tmp_path}/" in stdout and "8 GPUs per node" in stdout


def test_sbatch_script_passes_the_time_limit_warning_to_the_step(tmp_path: Path) -> None:
    proc = sbatch(tmp_path, wait=True)
    ready = tmp_path / "ready"
    for _ in range(600):                      # until the step is up (at most 60 s)
        if ready.exists():
            break
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        break
    assert ready.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)           # what Slurm sends 120 s before the limit
    _, stderr = proc.communicate(timeout=60)
    assert (tmp_path / "term").exists(), stderr
    assert "time limit near" in stderr and proc.returncode == 0


def test_version_and_help_print_once_under_mpirun(tmp_path: Path) -> None:
    """Real mpirun, two ranks: one copy of each, from rank 0."""
    mpirun = shutil.which("mpirun")
    if not mpirun:
        pytest.skip("no mpirun")
    for args, marker in ((["--version"], "mpi_kvbench "), (["run", "--help"], "usage: ")):
        proc = subprocess.run([mpirun, "-n", "2", sys.executable, "-m", "mpi_kvbench", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env=clean_env())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count(marker) == 1, proc.stdout
