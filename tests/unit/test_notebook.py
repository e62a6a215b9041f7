"""notebooks/analysis.ipynb runs top to bottom in a real Jupyter kernel, on the small result
it makes itself (three trials on two mpirun ranks), and shows its figures inline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "analysis.ipynb"


def test_the_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel and its subprocesses import this tree, and make their runs under tmp_path
    root = str(NOTEBOOK.parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6   # tails, QoS, bandwidth, hit rates, per rank, trials
    # the demo made its three trials here, and the first line printed names the run it loaded
    trials = sorted(p.name for p in tmp_path.glob("mpi_kvbench-notebook-*/trial*")
                    if (p / "result.h5").exists())
    assert trials == ["trial0", "trial1", "trial2"]
    first = next(o for o in outputs if o.output_type == "stream")
    ranks = 2 if shutil.which("mpirun") else 1
    assert first["text"].startswith(f"trial0 · tiny-1b, {ranks} rank")

