"""MPI: the communicator wrapper (the only importer of mpi4py) and the end-of-run reductions."""
