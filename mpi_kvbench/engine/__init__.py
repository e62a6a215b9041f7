"""One rank's request flow: the engine (serve), its cache plan (cache), I/O pool (iopool),
payload (payload), recording (record) and the prefill/decode handoff (disagg)."""

from mpi_kvbench.engine.serve import Engine, EngineSettings, StopReason

__all__ = ["Engine", "EngineSettings", "StopReason"]
