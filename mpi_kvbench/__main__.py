import sys

from mpi_kvbench.cli import main

sys.exit(main())
