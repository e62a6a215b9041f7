import os
import sys

# Before numpy loads: its OpenBLAS starts a thread per core that spins for a while after
# start-up, and eight ranks on one node then spend their set-up fighting those threads
# (8 ranks on 2 cores: faulting in the tiers took 2.3-5 s instead of 0.6 s). The
# benchmark does no linear algebra. A value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mpi_kvbench.cli import main  # noqa: E402

sys.exit(main())
