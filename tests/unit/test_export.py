"""``export``: the CSV and XLSX hold what summary.json holds, the trials table is the
statistics of the runs, and runs of different configurations are refused."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import pytest
import yaml

from mpi_kvbench import cli
from mpi_kvbench import export as ex
from mpi_kvbench.results.trials import spread


def _run(tmp: Path, name: str) -> Path:
    # a storage tier of kind null: no device I/O, so a few seconds on any machine
    cmd = [sys.executable, "-m", "mpi_kvbench", "--duration", "0", "--max-requests", "6",
           "--model", "tiny-1b", "--chunk-tokens", "16", "--results-dir", str(tmp), "--run-name", name,
           "--gpu-mem-gb", "0.001", "--cpu-mem-gb", "0.002", "--storage-capacity-gb", "0.02",
           "--users", "3", "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}",
           "--set", "tiers.storage.kind=null"]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One real run and two trials made from it with other measured figures (a real run
    thrice would have figures too alike to tell a wrong statistic from a right one)."""
    tmp = tmp_path_factory.mktemp("export")
    first = _run(tmp, "t0")
    out = [first]
    for k, scale in ((1, 1.5), (2, 0.25)):
        out.append(_copy(first, tmp / f"t{k}", lambda s, f=scale: _scale(s, f), run_name=f"t{k}"))
    return out


def _scale(summary: dict[str, Any], factor: float) -> None:
    """Multiplies a few measured figures, deep in the tree and at the top."""
    summary["storage_throughput_gbps"] *= factor
    summary["requests_completed"] = int(summary["requests_completed"] * factor) + 1
    summary["tiers"]["storage"]["latency_ms"]["read"]["p99"] *= factor
    summary["tiers"]["dram"]["write_gbps_per_rank"][0] *= factor


def _copy(src: Path, dst: Path, edit_summary: Any = None, edit_config: Any = None,
          run_name: str | None = None) -> Path:
    """A copy of a run directory with its summary (both files) and config edited."""
    shutil.copytree(src, dst)
    with h5py.File(dst / "result.h5", "r+") as f:
        summary = json.loads(f.attrs["summary"])
        cfg = yaml.safe_load(f.attrs["config_yaml"])
        if run_name:
            summary["run_name"] = run_name
            cfg["run"]["run_name"] = run_name
        if edit_summary:
            edit_summary(summary)
        if edit_config:
            edit_config(cfg)
        f.attrs["summary"] = json.dumps(summary)
        f.attrs["config_yaml"] = yaml.safe_dump(cfg, sort_keys=False)
    (dst / "summary.json").write_text(json.dumps(summary, indent=2))
    return dst


def _leaves(d: Any, name: str = "") -> dict[str, Any]:
    """summary.json's leaves, walked here independently of export.flatten."""
    if isinstance(d, dict):
        return {k: v for key, sub in d.items()
                for k, v in _leaves(sub, f"{name}.{key}" if name else key).items()}
    if isinstance(d, list) and d and not all(isinstance(x, str) for x in d):
        return {k: v for i, sub in enumerate(d) for k, v in _leaves(sub, f"{name}[{i}]").items()}
    if isinstance(d, list):
        return {name: "; ".join(d)}
    return {name: d}


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def _column(key: str) -> str:
    return key + "_requests" if key.rpartition(".")[2].startswith("batch_occupancy_") else key


def _same(cell: Any, value: Any, rel: float = 0.0) -> bool:
    if value is None or value == "":   # an empty cell, in CSV and XLSX alike
        return cell in ("", None) or (isinstance(cell, float) and math.isnan(cell))
    if isinstance(value, bool):
        return cell in (value, str(value))
    if isinstance(value, int | float):
        return float(cell) == pytest.approx(float(value), rel=rel, abs=0)
    return str(cell) == str(value)


def _cli(*argv: str) -> int:
    return cli.main(["export", *map(str, argv)])


def test_csv_holds_every_figure_of_summary_json(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "runs.csv"
    assert _cli(*runs, "--csv", out) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for run, row in zip(runs, rows, strict=True):
        leaves = _leaves(_summary(run))
        assert len(leaves) > 200
        for key, value in leaves.items():
            assert _same(row[_column(key)], value), (run.name, key, row[_column(key)], value)
        assert row["run_dir"] == str(run)
        assert row["config.kv.chunk_tokens"] == "16" and row["config.tiers.storage.kind"] == "null"
        with h5py.File(run / "result.h5", "r") as f:
            assert row["run_id"] == f.attrs["run_id"] and int(row["seed"]) == f.attrs["seed"]
    # the scaled figures differ between rows: the rows are not one run repeated
    assert len({r["storage_throughput_gbps"] for r in rows}) == 3
    assert len({r["config_hash"] for r in rows}) == 1


def test_xlsx_holds_every_figure_and_pandas_reads_it(runs: list[Path], tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    pd = pytest.importorskip("pandas")
    out = tmp_path / "runs.xlsx"
    assert _cli(*runs, "--xlsx", out) == 0
    wb = openpyxl.load_workbook(out, read_only=True)
    assert wb.sheetnames == ["runs", "trials"]
    header, *rows = list(wb["runs"].iter_rows(values_only=True))
    for run, cells in zip(runs, rows, strict=True):
        row = dict(zip(header, cells, strict=True))
        for key, value in _leaves(_summary(run)).items():
            # openpyxl writes 16 significant digits (Excel keeps 15): the last bit may go
            assert _same(row[_column(key)], value, rel=1e-15), (run.name, key)
    df = pd.read_excel(out, sheet_name="runs")
    assert list(df["run_name"]) == ["t0", "t1", "t2"]
    assert list(df["tiers.storage.latency_ms.read.p99"]) == pytest.approx([
        _summary(r)["tiers"]["storage"]["latency_ms"]["read"]["p99"] for r in runs], rel=1e-15)


def test_trials_are_the_statistics_of_the_runs(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "runs.csv"
    assert _cli(*runs, "--csv", out) == 0
    with open(tmp_path / "runs_trials.csv", newline="") as fh:
        trials = {r["figure"]: r for r in csv.DictReader(fh)}
    summaries = [_summary(r) for r in runs]
    for figure, get in {
        "storage_throughput_gbps": lambda s: s["storage_throughput_gbps"],
        "requests_completed": lambda s: s["requests_completed"],
        "tiers.storage.latency_ms.read.p99": lambda s: s["tiers"]["storage"]["latency_ms"]["read"]["p99"],
        "tiers.dram.write_gbps_per_rank[0]": lambda s: s["tiers"]["dram"]["write_gbps_per_rank"][0],
    }.items():
        values = [float(get(s)) for s in summaries]
        t = trials[figure]
        assert int(t["n"]) == int(t["runs"]) == 3
        mean, sd = sum(values) / 3, math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2)
        assert float(t["mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(t["min"]) == min(values) and float(t["max"]) == max(values)
        assert float(t["stdev"]) == pytest.approx(sd, rel=1e-12) and sd > 0
        assert float(t["cv"]) == pytest.approx(sd / mean, rel=1e-12)
    # an unchanged figure has no spread; facts of the run get no statistics
    assert float(trials["tiers.hbm.read_ops"]["cv"]) == 0 == float(trials["tiers.hbm.read_ops"]["stdev"])
    assert "world_size" not in trials and "seed" not in trials and "config.kv.chunk_tokens" not in trials
    assert "storage_health.classes.batch.checks.p95.target_ms" not in trials


def test_one_run_has_no_trials(runs: list[Path], tmp_path: Path) -> None:
    assert _cli(runs[0], "--csv", tmp_path / "one.csv", "--xlsx", tmp_path / "one.xlsx") == 0
    assert not (tmp_path / "one_trials.csv").exists()
    openpyxl = pytest.importorskip("openpyxl")
    assert openpyxl.load_workbook(tmp_path / "one.xlsx").sheetnames == ["runs"]


@pytest.mark.parametrize("what", ["world_size", "model", "config"])
def test_runs_of_another_configuration_are_refused(runs: list[Path], tmp_path: Path, what: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    edits = {
        "world_size": dict(edit_summary=lambda s: s.update(world_size=4)),
        "model": dict(edit_summary=lambda s: s.update(model="llama3.1-8b"),
                      edit_config=lambda c: c["model"].update(name="llama3.1-8b")),
        "config": dict(edit_config=lambda c: c["kv"].update(chunk_tokens=32)),
    }
    other = _copy(runs[0], tmp_path / "other", run_name="other", **edits[what])
    out = tmp_path / "mixed.csv"
    assert _cli(runs[0], other, "--csv", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {other}: ") and "--force" in err
    assert not out.exists()
    assert _cli(runs[0], other, "--csv", out, "--force") == 0
    with open(out, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert not (tmp_path / "mixed_trials.csv").exists()   # two configurations of one run each


def test_the_name_and_place_of_a_run_do_not_change_its_hash(runs: list[Path]) -> None:
    with h5py.File(runs[0] / "result.h5", "r") as f:
        text = f.attrs["config_yaml"]
    cfg = yaml.safe_load(text)
    cfg["run"].update(run_name="elsewhere", results_dir="/somewhere/else")
    moved = yaml.safe_dump(dict(reversed(list(cfg.items()))))
    assert ex.config_hash(moved) == ex.config_hash(text)
    cfg["run"]["seed"] += 1
    assert ex.config_hash(yaml.safe_dump(cfg)) != ex.config_hash(text)


def test_existing_outputs_are_kept_unless_overwrite(runs: list[Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out, trials = tmp_path / "r.csv", tmp_path / "r_trials.csv"
    trials.write_text("mine\n")
    assert _cli(*runs, "--csv", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(trials) in err
    assert not out.exists() and trials.read_text() == "mine\n"   # nothing written, nothing lost
    assert _cli(*runs, "--csv", out, "--overwrite") == 0
    assert trials.read_text().startswith("config_hash,")


@pytest.mark.parametrize("argv, message", [
    (["{run}", "{run}/result.h5", "--csv", "{tmp}/x.csv"], "the same run as"),
    (["{tmp}/nope", "--csv", "{tmp}/x.csv"], "no result.h5 there"),
    (["{run}"], "pass --csv FILE or --xlsx FILE"),
    (["{run}", "--xlsx", "{tmp}/x.csv"], "must end in .xlsx"),
    (["{run}", "--csv", "{tmp}/no/dir/x.csv"], "is not a directory"),
])
def test_bad_input_is_one_line(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               argv: list[str], message: str) -> None:
    assert _cli(*(a.format(run=runs[0], tmp=tmp_path) for a in argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.csv").exists()


def test_figure_stats_edge_cases() -> None:
    """The trials table's statistics are the suite's (results.trials.spread)."""
    assert spread([2.0]) == {"n": 1, "mean": 2.0, "min": 2.0, "max": 2.0, "stdev": None, "cv": None}
    assert spread([0.0, 0.0])["cv"] == 0.0
    s = spread([-1.0, 1.0])
    assert s["cv"] is None and s["stdev"] == pytest.approx(statistics.stdev([-1.0, 1.0]))
