"""Command line and configuration errors: one line, `error: ...`, names the field, exit 2,
nothing written. Also the `models` command.

Every error case runs in-process through ``cli.main`` (the same code path as the real
command, on a one-rank ``SerialComm`` so the test process never starts MPI); a few run
as real processes, to prove the process itself prints one line, exits 2 and shows no
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpi_kvbench import cli as cli_mod
from mpi_kvbench import config
from mpi_kvbench import run as run_mod
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.mpi.comm import SerialComm

BPT = {"tiny-1b": 24_576, "mistral-7b": 131_072, "llama2-7b": 524_288, "llama3.1-8b": 131_072,
       "llama3.1-70b-instruct": 327_680, "deepseek-v3": 70_272, "qwen3-32b": 262_144,
       "gpt-oss-120b": 73_728, "gpt-oss-20b": 49_152}
HEADS = {"tiny-1b": 4, "mistral-7b": 8, "llama2-7b": 32, "llama3.1-8b": 8,
         "llama3.1-70b-instruct": 8, "qwen3-32b": 8, "gpt-oss-120b": 8, "gpt-oss-20b": 8}


def cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpi_kvbench", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Outcome:
    """What a run of the command left: exit status and both streams (either way of running)."""

    returncode: int
    stdout: str
    stderr: str


def check_error(proc: Outcome | subprocess.CompletedProcess, results: Path) -> str:
    """The run failed on its configuration: exit 2, one line, nothing written. Returns it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    # stdout holds at most rank 0's live lines (a set-up error comes after "> set-up: ...")
    assert all(line.startswith("> ") for line in proc.stdout.splitlines()), proc.stdout
    assert not results.exists() or not any(results.iterdir()), list(results.rglob("*"))
    return lines[0]


# (id, arguments, strings the error line must hold); {tmp} is the case's own directory,
# which holds bad.yaml, list.yaml, typo.yaml and a regular file `afile`; results go to
# {tmp}/res unless the arguments give --results-dir.
LONG = "x" * 300
CASES = [
    ("set-typo", ["--set", "io.io_dept=4"], ["io.io_dept", "io_depth"]),
    ("set-type", ["--set", "io.io_depth=abc"], ["io.io_depth", "int"]),
    ("set-zero", ["--set", "io.io_depth=0"], ["io.io_depth"]),
    ("spare-negative", ["--set", "io.payload_spare_mb=-1"], ["io.payload_spare_mb"]),
    ("set-bool", ["--set", "io.verify=maybe"], ["io.verify"]),
    ("set-section", ["--set", "ioo.io_depth=4"], ["ioo", "'io'"]),
    ("set-workload", ["--set", "workload.usres=3"], ["workload.usres", "users"]),
    ("set-cap-bool", ["--set", "tiers.hbm.capacity_gb=true"], ["tiers.hbm.capacity_gb"]),
    ("set-tier", ["--set", "tiers.nvme.capacity_gb=1"], ["tiers.nvme"]),
    ("set-marks", ["--set", "engine.low_watermark=0.99"], ["low_watermark"]),
    ("set-form", ["--set", "iodepth"], ["--set"]),
    ("negative-size", ["--storage-capacity-gb", "-1"], ["tiers.storage.capacity_gb"]),
    ("negative-dram", ["--cpu-mem-gb", "-0.5"], ["tiers.dram.capacity_gb"]),
    ("negative-duration", ["--duration", "-3"], ["run.duration_s"]),
    ("no-end", ["--duration", "0"], ["run.duration_s", "run.max_requests"]),
    ("chunk-zero", ["--chunk-tokens", "0"], ["kv.chunk_tokens"]),
    ("tp-3", ["--tensor-parallel", "3"], ["kv.tensor_parallel", "3"]),
    ("tp-6-tiny", ["--model", "tiny-1b", "--tensor-parallel", "6"], ["kv.tensor_parallel"]),
    ("tp-world", ["--model", "tiny-1b", "--tensor-parallel", "2", "--cache-dir", "{tmp}/kv"],
     ["kv.tensor_parallel"]),
    ("model", ["--model", "llama3-8b"], ["model.name", "llama3.1-8b"]),
    ("user-model", ["--set", "models.m.layers=2", "--set", "models.m.kv_heads=0",
                    "--set", "models.m.head_dim=8", "--model", "m"], ["models.m.kv_heads"]),
    ("etc", ["--cache-dir", "/etc/x"], ["tiers.storage.path", "/etc/x"]),
    ("root", ["--cache-dir", "/"], ["tiers.storage.path"]),
    ("usr", ["--cache-dir", "/usr/local/kv"], ["tiers.storage.path"]),
    ("sys-template", ["--cache-dir", "/sys/{rank}"], ["tiers.storage.path"]),
    ("placeholder", ["--cache-dir", "{tmp}/kv/{rnk}"], ["tiers.storage.path", "{rnk}"]),
    ("results-proc", ["--results-dir", "/proc/x"], ["run.results_dir"]),
    ("cache-under-file", ["--cache-dir", "{tmp}/afile/kv"], ["tiers.storage.path"]),
    ("results-under-file", ["--results-dir", "{tmp}/afile/res"], ["run.results_dir"]),
    ("run-name", ["--run-name", "a/b"], ["run.run_name"]),
    ("flag", ["--frobnicate", "3"], ["--frobnicate"]),
    ("flag-type", ["--io-depth", "many"], ["--io-depth"]),
    ("bad-yaml", ["--config", "{tmp}/bad.yaml"], ["--config", "bad.yaml"]),
    ("list-yaml", ["--config", "{tmp}/list.yaml"], ["--config"]),
    ("missing-yaml", ["--config", "{tmp}/nope.yaml"], ["--config"]),
    ("yaml-typo", ["--config", "{tmp}/typo.yaml"], ["engine.promotoin", "promotion"]),
]
SETUP_CASES = [
    pytest.param("long-name", ["--cache-dir", "{tmp}/" + LONG + "/kv"], ["tiers.storage.path"]),
    # the storage tier finds this at set-up: still nothing may be written
    pytest.param("tiny-storage", ["--model", "tiny-1b", "--chunk-tokens", "16",
                                  "--cache-dir", "{tmp}/kv", "--storage-capacity-gb", "0.0001"],
                 ["tiers.storage"]),
]
ALL_CASES = {c[0]: (c[1], c[2]) for c in CASES} | {p.values[0]: (p.values[1], p.values[2])
                                                   for p in SETUP_CASES}
# run as real processes too: an error found while loading the config, one found by the
# MPI topology (a real singleton MPI world), and one found after a tier was opened
REAL_PROCESS = ["set-typo", "tp-world", "tiny-storage"]
SHOWN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def prepare(tmp: Path, args: list[str]) -> tuple[list[str], Path]:
    """The case's directory and files; returns the full argument list and its results dir."""
    tmp.mkdir(parents=True)
    (tmp / "bad.yaml").write_text("run:\n  seed: [1, 2\n  duration_s: 3\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "typo.yaml").write_text("engine:\n  promotoin: hbm\n")
    (tmp / "afile").write_text("x")
    args = [a.replace("{tmp}", str(tmp)) for a in args]
    results = tmp / "res"
    if "--results-dir" in args:
        results = Path(args[args.index("--results-dir") + 1])
    else:
        args = ["--results-dir", str(results), *args]
    return ["--run-name", "r", "--duration", "1", *args], results


def run_case(tmp: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """The case as a real ``python -m mpi_kvbench`` process."""
    argv, results = prepare(tmp, args)
    proc = cli(tmp, *argv)
    assert (tmp / "afile").read_text() == "x"
    return proc, results


def run_in_process(tmp: Path, args: list[str], capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> tuple[Outcome, Path]:
    """The case through ``cli.main`` in this process, on a one-rank world without MPI. A
    warning the real process would print to stderr is added to stderr, as it would be."""
    argv, results = prepare(tmp, args)
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(run_mod, "world", SerialComm)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)   # main() sets it
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)    # rank 0 is the one that prints
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli_mod.main(argv)
    out, err = capsys.readouterr()
    err += "".join(f"warning: {w.message}\n" for w in caught
                   if not issubclass(w.category, SHOWN_WARNINGS))
    assert (tmp / "afile").read_text() == "x"
    return Outcome(code, out, err), results


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The REAL_PROCESS cases, each as its own process, at once."""
    base = tmp_path_factory.mktemp("cli")
    with ThreadPoolExecutor(max_workers=len(REAL_PROCESS)) as pool:
        futures = {name: pool.submit(run_case, base / name, ALL_CASES[name][0])
                   for name in REAL_PROCESS}
    return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("case,args,names", [*CASES, *SETUP_CASES],
                         ids=[c[0] for c in CASES] + [p.values[0] for p in SETUP_CASES])
def test_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, case: str, args: list[str],
                                    names: list[str]) -> None:
    proc, results = run_in_process(tmp_path / "case", args, capsys, monkeypatch)
    line = check_error(proc, results)
    for name in names:
        assert name in line, line
    assert not Path("/proc/x").exists() and not Path("/etc/x").exists()


@pytest.mark.parametrize("case", REAL_PROCESS)
def test_a_real_process_prints_one_line_and_exits_2(processes: dict, case: str) -> None:
    proc, results = processes[case]
    line = check_error(proc, results)
    assert "Traceback" not in proc.stderr
    for name in ALL_CASES[case][1]:
        assert name in line, line


def test_a_read_only_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc, results = run_in_process(tmp_path / "case", ["--cache-dir", str(ro / "kv")],
                                       capsys, monkeypatch)
        assert "tiers.storage.path" in check_error(proc, results)
    finally:
        ro.chmod(0o700)


def test_too_small_a_storage_tier_names_its_capacity(processes: dict) -> None:
    proc, _ = processes["tiny-storage"]
    assert proc.returncode == 2
    assert "capacity_gb" in proc.stderr and "free" not in proc.stderr


def test_a_set_up_error_is_still_one_line(processes: dict) -> None:
    """Too small a storage tier is found only when the tier opens: still exit 2 and one
    line, and no tier file or result is left (a real process)."""
    proc, results = processes["tiny-storage"]
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tiers.storage")
    assert not (results.parent / "kv").exists()
    assert not (results / "r" / "result.h5").exists()


# ---- path safety, checked without running anything ---------------------------------------


def load_path(path: str) -> None:
    config.load(None, [{"tiers": {"storage": {"path": path}}}])


@pytest.mark.parametrize("path", ["/etc", "/etc/kv", "/proc/1", "/dev/shm/kv", "/var/lib/kv",
                                  "/boot/{rank}", "/", "/usr/../etc/kv", "/lib64/x"])
def test_system_directories_are_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="tiers.storage.path"):
        load_path(path)


def test_a_double_slash_does_not_get_past_the_check() -> None:
    with pytest.raises(ConfigError, match="tiers.storage.path"):
        load_path("//etc/mpi-kvbench-test")


def test_a_symlink_into_a_system_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(ConfigError, match="tiers.storage.path"):
        load_path(str(tmp_path / "link" / "mpi-kvbench-test"))


def test_own_directories_are_accepted(tmp_path: Path) -> None:
    load_path(str(tmp_path / "a" / "{rank}"))
    load_path("")
    cfg = config.load(None, [{"tiers": {"storage": {"path": str(tmp_path / "{run_id}")}},
                              "run": {"results_dir": str(tmp_path / "res")}}])
    assert cfg.tiers[-1].params.path == str(tmp_path / "{run_id}")
    assert not (tmp_path / "res").exists()         # loading a config writes nothing


def test_flags_and_set_reach_the_config() -> None:
    from mpi_kvbench.cli import build_parser, overrides

    args = build_parser().parse_args(["run", "--model", "tiny-1b", "--io-depth", "3",
                                      "--gpu-mem-gb", "0", "--set", "io.verify=true",
                                      "--cache-dir", "/tmp/kv-{rank}"])
    cfg = config.load(None, overrides(args))
    assert cfg.model.name == "tiny-1b" and cfg.io.io_depth == 3 and cfg.io.verify is True
    assert [t.level for t in cfg.tiers] == ["dram", "storage"]
    assert cfg.tiers[-1].params.path == "/tmp/kv-{rank}"


# ---- models command -------------------------------------------------------------------------


def models(tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
           *args: str) -> Outcome:
    """``models`` through ``cli.main`` in this process (nothing to start: no MPI, no tiers)."""
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)   # main() sets it
    capsys.readouterr()
    code = cli_mod.main(["models", *args])
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def test_models_json_lists_the_nine(tmp_path: Path) -> None:
    """A real process: the JSON on stdout is all a script reading it gets."""
    proc = cli(tmp_path, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["model"]: r["bytes_per_token"] for r in rows} == BPT
    assert all(r["bytes_per_token_per_rank"] == r["bytes_per_token"] for r in rows)


@pytest.mark.parametrize("tp", [8, 3])
def test_models_per_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch, tp: int) -> None:
    proc = models(tmp_path, capsys, monkeypatch, "--tensor-parallel", str(tp), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads(proc.stdout)}
    for name, bpt in BPT.items():
        got = rows[name]["bytes_per_token_per_rank"]
        assert rows[name]["tensor_parallel"] == tp
        if name == "deepseek-v3":
            assert got == bpt
            continue
        heads = HEADS[name]
        fits = heads % tp == 0 if tp <= heads else tp % heads == 0
        assert got == (bpt // min(tp, heads) if fits else None), name


def test_models_text_table(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    proc = models(tmp_path, capsys, monkeypatch, "--tensor-parallel", "8")
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines()[1:] if ln.strip()}
    assert set(lines) == set(BPT)
    assert lines["llama3.1-8b"][-2:] == ["131,072", "16,384"]
    assert lines["llama2-7b"][-1] == "65,536"
    assert lines["deepseek-v3"][-1] == "70,272"


def test_models_with_a_user_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.yaml").write_text(
        "models:\n  mine:\n    layers: 10\n    kv_heads: 2\n    head_dim: 64\n    dtype: fp32\n")
    proc = models(tmp_path, capsys, monkeypatch, "--config", "m.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads(proc.stdout)}
    assert rows["mine"]["bytes_per_token"] == 10 * 2 * 64 * 2 * 4
    assert len(rows) == 10


def test_set_one_weight_of_a_default_mapping_keeps_the_others_tiers() -> None:
    """For a mapping that default.yaml spells out (tiers.hbm), --set changes one key only."""
    cfg = config.load(None, [config.parse_set("tiers.hbm.capacity_gb=0.5")])
    hbm = [t for t in cfg.tiers if t.level == "hbm"][0]
    assert hbm.kind == "hbm" and hbm.capacity_bytes == 500_000_000


def test_set_one_weight_of_a_plugin_mapping_keeps_the_others() -> None:
    cfg = config.load(None, [config.parse_set("workload.qos_mix.interactive=0.3")])
    assert cfg.workload.qos_mix == {"interactive": 0.3, "responsive": 0.35, "batch": 0.5}


CALIBRATE_TINY = ["--set", "model.name=tiny-1b", "--set", "kv.chunk_tokens=16"]   # 393 KB objects


@pytest.fixture
def rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    """No launcher's rank in the environment: this process is rank 0, the one that prints."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)


def test_calibrate_takes_the_configs_storage_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      rank0: None) -> None:
    """The command used to keep only allow_memory of tiers.storage: o_direct and
    max_free_share given with --set were silently ignored."""
    base = ["calibrate", "--cache-dir", str(tmp_path / "c"), "--size-gb", "0.002", "--json",
            *CALIBRATE_TINY]
    capsys.readouterr()
    assert cli_mod.main([*base, "--set", "tiers.storage.o_direct=false"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["o_direct"] is False and result["bytes"] == 5 * 16 * BPT["tiny-1b"]
    assert cli_mod.main([*base, "--set", "tiers.storage.max_free_share=1e-12"]) == 2
    assert "GB free, too little for one object" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_calibrate_names_size_gb_when_it_holds_no_object(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         rank0: None) -> None:
    capsys.readouterr()
    assert cli_mod.main(["calibrate", "--cache-dir", str(tmp_path / "c"), "--size-gb", "0.0003",
                         *CALIBRATE_TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --size-gb 0.0003: less than one object"), err
    assert f"{16 * BPT['tiny-1b'] / 1e9:g} GB" in err[0]
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, line", [
    (["--duraton", "5"], "error: --duraton: unknown flag; did you mean --duration? (see --help)"),
    (["calibrate", "--cache-dir", "x", "--cache-di", "y"],
     "error: --cache-di: unknown flag; did you mean --cache-dir? (see --help)"),
    # another command's flag: said so, never offered back (it was: "did you mean --model?")
    (["calibrate", "--cache-dir", "x", "--model", "tiny-1b"],
     "error: --model: not a flag of the calibrate command (see `mpi_kvbench calibrate --help`)"),
    (["--json"], "error: --json: not a flag of the run command (see `mpi_kvbench run --help`)"),
])
def test_a_wrong_flag_gets_a_hint_from_its_own_command(argv: list[str], line: str,
                                                       capsys: pytest.CaptureFixture[str],
                                                       rank0: None) -> None:
    capsys.readouterr()
    assert cli_mod.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [line]
