"""``--validation-trace``: does this run hit the cache as a recorded real system did?

The file (YAML or JSON, format in docs/RESULTS.md) holds the recorded prefix-hit ratio
and, optionally, the share of hits each tier served. The run passes when each recorded
figure is within the tolerance of the measured one, as an absolute difference of ratios
(0.05: five percentage points), the way the MLPerf reference states its +-5%. Only what
the file records is judged; a tier the file names but the run lacks fails.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from mpi_kvbench.errors import ConfigError

KEYS = ("source", "prefix_hit_ratio", "tier_hit_shares")


def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1 \
            or not math.isfinite(value):
        raise ConfigError(f"{where}={value!r}: give a ratio between 0 and 1")
    return float(value)


def read(path: str) -> dict[str, Any]:
    """The recorded figures, checked; a bad file is one ConfigError line."""
    where = f"run.validation_trace: {path}"
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)   # JSON is YAML
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}; give the path of a recorded trace file") from None
    except yaml.YAMLError:
        raise ConfigError(f"{where}: not valid YAML or JSON; fix its syntax") from None
    if not isinstance(data, dict) or "prefix_hit_ratio" not in data:
        raise ConfigError(f"{where}: needs prefix_hit_ratio (see docs/RESULTS.md)")
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; valid: {', '.join(KEYS)}")
    out = {"source": str(data.get("source", "")),
           "prefix_hit_ratio": _ratio(data["prefix_hit_ratio"], "prefix_hit_ratio")}
    shares = data.get("tier_hit_shares") or {}
    if not isinstance(shares, dict):
        raise ConfigError(f"{where}: tier_hit_shares: give a mapping of tier -> share of hits")
    out["tier_hit_shares"] = {str(t): _ratio(v, f"tier_hit_shares.{t}") for t, v in shares.items()}
    if shares and abs(sum(out["tier_hit_shares"].values()) - 1) > 0.01:
        raise ConfigError(f"{where}: tier_hit_shares add up to"
                          f" {sum(out['tier_hit_shares'].values()):.3f}; they are shares of all hits")
    return out


def tier_hit_shares(summary: dict[str, Any]) -> dict[str, float] | None:
    """Each tier's share of the chunk hits the run served; None without a hit."""
    hits = {t: v.get("chunk_hits", 0) for t, v in summary.get("tiers", {}).items()}
    total = sum(hits.values())
    return {t: h / total for t, h in hits.items()} if total else None


def validate(summary: dict[str, Any], recorded: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """summary.json's ``validation``: each recorded figure against the measured one."""
    checks = []

    def check(name: str, want: float, got: float | None) -> None:
        diff = None if got is None else round(got - want, 6)
        checks.append({"figure": name, "recorded": want, "measured": got, "difference": diff,
                       "pass": diff is not None and abs(diff) <= tolerance + 1e-12})

    check("prefix_hit_ratio", recorded["prefix_hit_ratio"], summary.get("prefix_hit_ratio"))
    shares = tier_hit_shares(summary) or {}
    for tier, want in recorded["tier_hit_shares"].items():
        got = shares.get(tier)
        check(f"tier_hit_share.{tier}", want, None if got is None else round(got, 6))
    return {"source": recorded["source"], "tolerance": tolerance,
            "verdict": "PASS" if all(c["pass"] for c in checks) else "FAIL", "checks": checks}


def render(v: dict[str, Any]) -> str:
    parts = ", ".join(f"{c['figure']} {c['measured'] if c['measured'] is not None else '-'}"
                      f" vs {c['recorded']}" for c in v["checks"])
    return f"  validation trace (+-{v['tolerance']:g}): {v['verdict']} ({parts})"
