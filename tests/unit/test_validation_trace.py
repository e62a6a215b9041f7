"""``--validation-trace``: the measured hit ratios against recorded ones, in and out of
tolerance, from a run's own summary; a bad file is one line before the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.results import validation

SUMMARY = {"prefix_hit_ratio": 0.40,
           "tiers": {"hbm": {"chunk_hits": 10}, "dram": {"chunk_hits": 30}, "storage": {"chunk_hits": 60}}}


def recorded(tmp: Path, **doc) -> dict:
    path = tmp / "rec.yaml"
    path.write_text(json.dumps(doc))
    return validation.read(str(path))


@pytest.mark.parametrize("ratio, verdict", [(0.40, "PASS"), (0.449, "PASS"), (0.351, "PASS"),
                                            (0.46, "FAIL"), (0.30, "FAIL")])
def test_the_hit_ratio_within_the_tolerance_passes(tmp_path: Path, ratio: float, verdict: str) -> None:
    v = validation.validate(SUMMARY, recorded(tmp_path, prefix_hit_ratio=ratio), 0.05)
    assert v["verdict"] == verdict
    assert v["checks"][0]["difference"] == pytest.approx(0.40 - ratio)


def test_tier_shares_are_judged_too(tmp_path: Path) -> None:
    rec = recorded(tmp_path, source="x", prefix_hit_ratio=0.4,
                   tier_hit_shares={"hbm": 0.12, "dram": 0.28, "storage": 0.60})
    v = validation.validate(SUMMARY, rec, 0.05)
    assert [(c["figure"], c["measured"]) for c in v["checks"]] == [
        ("prefix_hit_ratio", 0.4), ("tier_hit_share.hbm", 0.1), ("tier_hit_share.dram", 0.3),
        ("tier_hit_share.storage", 0.6)]
    assert v["verdict"] == "PASS"
    assert validation.validate(SUMMARY, rec, 0.01)["verdict"] == "FAIL"   # hbm is 0.02 off
    off = recorded(tmp_path, prefix_hit_ratio=0.4, tier_hit_shares={"dram": 0.4, "storage": 0.6})
    assert validation.validate(SUMMARY, off, 0.05)["verdict"] == "FAIL"   # dram 0.3 vs 0.4


@pytest.mark.parametrize("doc, message", [
    ({}, "needs prefix_hit_ratio"), ({"prefix_hit_ratio": 1.5}, "between 0 and 1"),
    ({"prefix_hit_ratio": 0.5, "hit": 1}, "unknown key"),
    ({"prefix_hit_ratio": 0.5, "tier_hit_shares": {"dram": 0.5}}, "add up to"),
])
def test_bad_files_are_one_line(tmp_path: Path, doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recorded(tmp_path, **doc)


def test_a_run_reports_its_validation(tmp_path: Path) -> None:
    """A run whose recorded ratio is its own measured one passes; the summary holds both."""
    (tmp_path / "rec.json").write_text(json.dumps({"prefix_hit_ratio": 0.0}))
    args = [sys.executable, "-m", "mpi_kvbench", "--model", "tiny-1b", "--chunk-tokens", "64",
            "--gpu-mem-gb", "0", "--cpu-mem-gb", "0", "--storage-capacity-gb", "0.05",
            "--users", "2", "--duration", "0", "--max-requests", "3",
            "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}",
            "--validation-trace", str(tmp_path / "rec.json"), "--results-dir", str(tmp_path)]
    proc = subprocess.run([*args, "--run-name", "v"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    measured = summary["prefix_hit_ratio"]
    v = summary["validation"]
    assert v["checks"][0]["measured"] == measured
    assert v["verdict"] == ("PASS" if abs(measured) <= 0.05 else "FAIL")
    assert f"validation trace (+-0.05): {v['verdict']}" in proc.stdout
    # a missing file: one line, exit 2, before anything runs
    bad = subprocess.run([*args, "--validation-trace", str(tmp_path / "nope.json"), "--run-name", "w"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope.json" in bad.stderr
