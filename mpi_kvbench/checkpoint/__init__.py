"""The streaming checkpoint workload (``mpi_kvbench checkpoint``): every rank writes its
shard of a model checkpoint through a small pool of buffers that a dgen-py producer keeps
full, to a file or an S3 object, then restores it. ``settings`` (what to write, where),
``stream`` (the buffer pool), ``targets`` (file and S3 writers and readers behind one
interface), ``run`` (the ranks together: barrier, window, result files)."""
