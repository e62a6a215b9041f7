"""mpi_kvbench: an MPI-distributed benchmark of storage under LLM KV-cache offload."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
