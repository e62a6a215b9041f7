"""What a rank costs besides its measurement: resident memory and set-up time.

The result reports both per rank (counters ``peak_rss_bytes``, ``memory.<stage>_rss_bytes``
and ``setup.<phase>_us``) so a run at thousands of ranks shows where its memory and its
start-up went. Linux reads ``/proc/self``; elsewhere ``resource`` gives the peak only.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

_STATUS = "/proc/self/status"


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident memory now (0 where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def peak_rss_bytes() -> int:
    """The most resident memory this process has had (VmHWM; ru_maxrss elsewhere)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def process_age_s() -> float:
    """Seconds since this process started (0.0 where /proc is missing): what the
    interpreter and the imports took before the first line of the run."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


@dataclass
class Footprint:
    """One rank's set-up phases (seconds, in order) and resident memory at stages."""

    setup_s: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    _t: float = field(default_factory=time.perf_counter)

    def lap(self, phase: str) -> None:
        """Closes ``phase``: the time since the previous lap (added, if seen before)."""
        now = time.perf_counter()
        self.setup_s[phase] = self.setup_s.get(phase, 0.0) + now - self._t
        self._t = now

    def mark(self, stage: str) -> None:
        self.rss[stage] = rss_bytes()

    def counters(self) -> dict[str, int]:
        """The per-rank counters the result keeps."""
        out = {f"setup.{k}_us": int(v * 1e6) for k, v in self.setup_s.items()}
        out |= {f"memory.{k}_rss_bytes": v for k, v in self.rss.items()}
        out["peak_rss_bytes"] = peak_rss_bytes()
        return out
