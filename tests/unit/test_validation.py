"""Validation without holes: NaN and infinity, integers too large, NUL bytes, unknown QoS
classes and plug-ins, per-rank paths that escape into system folders, and set-up errors
on a rank: each is one ``error:`` line naming the field, exit 2. A hypothesis test feeds
the config loader and the command line random values: success or ConfigError, nothing else.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config_cli import check_error, run_in_process

from mpi_kvbench import cli as cli_mod
from mpi_kvbench import config
from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.tiers.storage import StorageTier

TINY = ["--model", "tiny-1b", "--chunk-tokens", "16", "--max-requests", "1", "--duration", "0"]

# (id, arguments, strings the one error line must hold); each refused before anything runs
CASES = [
    ("flag-nan", ["--storage-capacity-gb", "nan"], ["--storage-capacity-gb", "finite"]),
    ("flag-inf", ["--request-rate", "inf"], ["--request-rate", "finite"]),
    ("flag-neg-inf", ["--duration=-inf"], ["--duration", "finite"]),
    ("set-nan-capacity", ["--set", "tiers.storage.capacity_gb=.nan"], ["tiers.storage.capacity_gb"]),
    ("set-inf-capacity", ["--set", "tiers.dram.capacity_gb=.inf"], ["tiers.dram.capacity_gb"]),
    ("set-nan-weight", ["--set", "workload.templates={chatbot: .nan}"],
     ["workload.templates.chatbot", "finite"]),
    ("set-nan-compute", ["--set", "engine.prefill_tokens_per_s=.nan"],
     ["engine.prefill_tokens_per_s", "finite"]),
    ("set-inf-tpot", ["--set", "engine.time_per_output_token_ms=.inf"],
     ["engine.time_per_output_token_ms"]),
    ("set-nan-target", ["--set", "qos.targets_ms.interactive.p95=.nan"],
     ["qos.targets_ms.interactive.p95"]),
    ("set-nan-plugin", ["--set", "tiers.storage.max_free_share=.nan"],
     ["tiers.storage.max_free_share"]),
    ("set-nan-policy", ["--set", "engine.policy_params={x: .nan}"], ["engine.policy_params"]),
    ("io-depth-1e5", ["--io-depth", "1e5"], ["io.io_depth", "at most"]),
    ("set-io-depth-1e5", ["--set", "io.io_depth=1e5"], ["io.io_depth", "at most"]),
    ("seed-2-64", ["--seed", str(2**64)], ["run.seed", "2**63"]),
    ("seed-negative", ["--seed", "-1"], ["run.seed"]),
    ("chunk-huge", ["--set", "kv.chunk_tokens=1e30"], ["kv.chunk_tokens"]),
    ("requests-huge", ["--max-requests", str(10**30)], ["run.max_requests"]),
    ("capacity-huge", ["--cpu-mem-gb", "1e300"], ["tiers.dram.capacity_gb"]),
    ("model-huge", ["--set", "models.m.layers=1e12", "--set", "models.m.kv_heads=1",
                    "--set", "models.m.head_dim=8", "--model", "m"], ["models.m.layers"]),
    ("users-float", ["--set", "workload.users=2.5"], ["workload.users", "int"]),
    ("nul-cache-dir", ["--cache-dir", "{tmp}/kv\0x"], ["tiers.storage.path", "NUL"]),
    ("nul-run-name", ["--run-name", "a\0b"], ["run.run_name", "NUL"]),
    ("long-run-name", ["--run-name", "x" * 201], ["run.run_name", "201 bytes", "at most 200"]),
    ("nul-config", ["--config", "{tmp}/a\0.yaml"], ["--config", "NUL"]),
    ("qos-class", ["--set", "qos.targets_ms.interactve.p95=5"],
     ["qos.targets_ms.interactve", "'interactive'"]),
    ("tier-kind", ["--set", "tiers.hbm.kind=hmb"], ["tiers.hbm.kind", "'hbm'"]),
    ("workload-kind", ["--workload", "sharegtp"], ["workload.kind", "'sharegpt'"]),
    ("policy-kind", ["--set", "engine.policy=lur"], ["engine.policy", "'lru'"]),
    ("escape-template", ["--cache-dir", "{tmp}/kv/{rank}/" + "../" * 40 + "var/lib/kvbench"],
     ["tiers.storage.path", "system directory"]),
    ("flag-typo", ["--io-dept", "4"], ["--io-dept", "--io-depth"]),
    ("flag-abbrev", ["--dur", "4"], ["--dur", "--duration"]),
]


@pytest.mark.parametrize("case,args,names", CASES, ids=[c[0] for c in CASES])
def test_bad_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch, case: str, args: list[str],
                                 names: list[str]) -> None:
    proc, results = run_in_process(tmp_path / "case", [*TINY, *args], capsys, monkeypatch)
    line = check_error(proc, results)
    for name in names:
        assert name in line, line


# ---- set-up errors on a rank: exit 2, one line, the field named ---------------------------


def test_a_per_rank_folder_that_cannot_be_made(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """{rank} expands to a name a regular file already holds: found when the tier opens."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "0").write_text("not a folder")
    proc, results = run_in_process(tmp_path / "case",
                                   [*TINY, "--cache-dir", str(tmp_path / "d" / "{rank}" / "kv")],
                                   capsys, monkeypatch)
    line = check_error(proc, results)
    assert "tiers.storage.path" in line and str(tmp_path / "d" / "0") in line
    assert (tmp_path / "d" / "0").read_text() == "not a folder"


def test_a_dram_tier_larger_than_the_node(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    proc, results = run_in_process(
        tmp_path / "case", [*TINY, "--cpu-mem-gb", str(2 * total / 1e9), "--cache-dir", "{tmp}/kv"],
        capsys, monkeypatch)
    assert "tiers.dram.capacity_gb" in check_error(proc, results)


def ctx(rank: int) -> RankContext:
    return RankContext(rank=rank, world_size=2, run_id="t")


def test_each_rank_checks_its_own_real_path(tmp_path: Path) -> None:
    """Rank 0's path is fine (the config check passes), rank 1's symlink leads into /var/lib:
    rank 1 refuses when it opens its tier, before making anything."""
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "0").mkdir()
    (tmp_path / "links" / "1").symlink_to("/var/lib")
    template = str(tmp_path / "links" / "{rank}" / "kvbench-test")
    config.load(None, [{"tiers": {"storage": {"path": template}}}])    # passes: rank 0 is fine
    params = StorageTier.Params(path=template)
    with pytest.raises(ConfigError, match="rank 1's path /var/lib/kvbench-test is a system"):
        StorageTier(params, 10**6, 4096, level="storage").open(ctx(1))
    assert not Path("/var/lib/kvbench-test").exists()
    tier = StorageTier(params, 10**6, 4096, level="storage")
    tier.open(ctx(0))
    try:
        assert tier.path.startswith(str(tmp_path / "links" / "0" / "kvbench-test"))
    finally:
        tier.close()
        tier.cleanup()


def test_a_parent_step_through_a_missing_rank_folder(tmp_path: Path) -> None:
    """``{rank}/..`` where the rank's folder does not exist: the path means what the kernel
    would make of it once the folder existed, the parent; the tier opens there."""
    params = StorageTier.Params(path=str(tmp_path / "kv" / "{rank}" / ".." / "shared"))
    tier = StorageTier(params, 10**6, 4096, level="storage")
    tier.open(ctx(0))
    try:
        assert os.path.dirname(tier.path) == str(tmp_path / "kv" / "shared")
        assert not (tmp_path / "kv" / "0").exists()
    finally:
        tier.close()
        tier.cleanup()


def test_binary_garbage_in_a_csv_trace_is_skipped_rows(tmp_path: Path) -> None:
    from mpi_kvbench.registry import WORKLOADS

    trace = tmp_path / "t.csv"
    good = "".join(f"{i},ChatGPT,{100 + i},20,{120 + i},Conversation log\n" for i in range(5))
    trace.write_bytes(b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                      + good.encode() + b"1,\x00\x00,5\n" + b"2,a\rb,3,4\n" + b"\xff\xfe\x00junk\n")
    params = WORKLOADS.params("burstgpt", {"trace": str(trace)}, "workload")
    wl = WORKLOADS.load("burstgpt")(params, 1)
    assert len(list(wl.requests())) == 5
    assert wl._skips["a row that is not CSV text"] >= 1      # the NUL row at least
    assert sum(wl._skips.values()) == 3                          # every bad row, counted


# ---- scientific notation, as integers where integers are expected -----------------------------


def test_scientific_notation_in_set_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("run:\n  max_requests: 1e3\n  calibrate_gb: 5e-1\n"
                                     "engine:\n  prefill_tokens_per_s: 2.5E4\n")
    cfg = config.load(str(tmp_path / "c.yaml"), [config.parse_set("io.io_depth=1.6e1"),
                                                 config.parse_set("run.seed=1e9")])
    assert cfg.run.max_requests == 1000 and type(cfg.run.max_requests) is int
    assert cfg.run.seed == 10**9 and type(cfg.run.seed) is int
    assert cfg.io.io_depth == 16 and cfg.run.calibrate_gb == 0.5
    assert cfg.engine.prefill_tokens_per_s == 25_000.0
    with pytest.raises(ConfigError, match="io.io_depth=1.5: expected int"):
        config.load(None, [config.parse_set("io.io_depth=1.5e0")])
    assert config.parse_set("run.run_name=1e3x") == {"run": {"run_name": "1e3x"}}   # not a number


def test_flags_take_integral_scientific_notation() -> None:
    args = cli_mod.build_parser().parse_args(["run", "--max-requests", "2e3", "--seed", "7"])
    assert args.max_requests == 2000 and args.seed == 7
    with pytest.raises(ConfigError, match="--max-requests"):
        cli_mod.build_parser().parse_args(["run", "--max-requests", "2.5"])


# ---- hypothesis: success or ConfigError, nothing else ---------------------------------------

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.integers(min_value=2**60, max_value=2**70), st.just(10**400))
VALUES = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=8),
                   st.sampled_from(["a\0b", "", "null", "{rank}", "/etc", "1e5", ".nan"]),
                   st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.sampled_from(["chatbot", "p95", "interactive", "x"]),
                                   NUMBERS, max_size=2))


def keys() -> list[str]:
    """Every leaf of the defaults, plus plug-in keys and a few that do not exist."""
    out = []

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and v and k not in ("targets_ms",):
                walk(v, f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}")
    walk(config.default_dict(), "")
    return out + ["workload.users", "workload.templates", "workload.trace", "workload.speedup",
                  "tiers.storage.max_free_share", "tiers.hbm.device", "tiers.null.capacity_gb",
                  "qos.targets_ms.interactive.p99", "qos.targets_ms.batch", "models.m.layers",
                  "engine.policy_params.x", "nope.x", "run.nope"]


KEYS = keys()


def nested(key: str, value: object) -> dict:
    out: dict = {}
    node = out
    *parts, leaf = key.split(".")
    for p in parts:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_the_loader_raises_only_config_errors(changes: list[tuple[str, object]]) -> None:
    try:
        cfg = config.load(None, [nested(k, v) for k, v in changes])
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    for t in cfg.tiers:          # what got through is sane
        assert 0 < t.capacity_bytes < 2**63
    assert 1 <= cfg.io.io_depth <= 1024
    assert math.isfinite(cfg.run.duration_s) and 0 <= cfg.run.seed < 2**63


FLAGS = ["--duration", "--max-requests", "--seed", "--gpu-mem-gb", "--cpu-mem-gb",
         "--storage-capacity-gb", "--tensor-parallel", "--chunk-tokens", "--io-depth", "--users",
         "--request-rate", "--precondition", "--model", "--workload", "--run-name", "--frob"]
TEXT = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e5", "1e400", str(2**64), "-1", "0",
                                  "2.5", "x", "", "tiny-1b", "--", "1_000"]),
                 st.integers().map(str), st.floats().map(str), st.text(max_size=6))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(FLAGS), TEXT), min_size=1, max_size=3))
def test_the_command_line_exits_0_or_2_with_one_line(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     flags: list[tuple[str, str]]) -> None:
    """Parsing and validation in-process through ``cli.main``; the run itself is replaced
    by a stub that accepts (the set-up cases run for real above)."""
    import mpi_kvbench.run as run_mod

    monkeypatch.setattr(run_mod, "execute", lambda cfg, line, quiet=False: 0)
    argv = ["--model", "tiny-1b"] + [x for f, v in flags for x in (f, v)]
    capsys.readouterr()
    code = cli_mod.main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    else:
        assert err == "", (argv, err)
