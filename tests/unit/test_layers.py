"""The package's imports run one way, in the README's data flow: no cycles (function-local
imports count), no layer reaching back up, MPI only in mpi/comm.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "mpi_kvbench"
#: Function-local imports are allowed for these only: optional dependencies, loaded when used,
#: and h5py, which only rank 0 needs in a run (the other ranks save 13 MiB and its import).
OPTIONAL = {"h5py", "torch", "tiktoken", "pandas", "matplotlib", "mpi4py", "kvikio", "openpyxl",
            "s3dlio", "minio", "urllib3", "s3torchconnector", "zstandard"}
#: ... and in the command line, whose commands import what they use (`--help` stays fast).
LAZY_MODULES = {"mpi_kvbench.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    pkg = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + [base])
            out += [(f"{base}.{a.name}", id(node) in top) for a in node.names] or [(base, id(node) in top)]
    return out


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, _ in imports(p):
            while target and target not in mods:   # "a.b.Name" -> the module "a.b"
                target = target.rpartition(".")[0]
            if target and target != m:
                g[m].add(target)
    return g


GRAPH = graph()


def reaches(src: str, dst_prefix: str) -> list[str]:
    """Modules under ``src`` that import a module under ``dst_prefix``."""
    return sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if m == src or m.startswith(src + ".")
                  for t in ts if t == dst_prefix or t.startswith(dst_prefix + "."))


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_the_graph_is_read_right() -> None:
    """The checks below mean something only if edges are found at all."""
    assert "mpi_kvbench.engine.record" in GRAPH["mpi_kvbench.engine.serve"]
    assert "mpi_kvbench.results.names" in GRAPH["mpi_kvbench.results.summary"]


@pytest.mark.parametrize("lower, upper", [
    # plug-ins know nothing of what runs them
    *[(p, u) for p in ("mpi_kvbench.tiers", "mpi_kvbench.eviction", "mpi_kvbench.workloads")
      for u in ("mpi_kvbench.engine", "mpi_kvbench.config", "mpi_kvbench.mpi", "mpi_kvbench.results",
                "mpi_kvbench.run")],
    # the engine takes its own settings and never sees MPI, the reductions or the files
    *[("mpi_kvbench.engine", u) for u in ("mpi_kvbench.config", "mpi_kvbench.run",
                                          "mpi_kvbench.mpi.reduce", "mpi_kvbench.results.summary",
                                          "mpi_kvbench.results.hdf5", "mpi_kvbench.distribute")],
    # results are written from plain data
    *[("mpi_kvbench.results", u) for u in ("mpi_kvbench.engine", "mpi_kvbench.mpi", "mpi_kvbench.config",
                                           "mpi_kvbench.run")],
    ("mpi_kvbench.mpi", "mpi_kvbench.engine"),
    ("mpi_kvbench.registry", "mpi_kvbench.config"),
    ("mpi_kvbench.params", "mpi_kvbench.config"),
])
def test_no_layer_reaches_back_up(lower: str, upper: str) -> None:
    assert reaches(lower, upper) == []


def test_only_the_disaggregated_handoff_of_the_engine_talks_to_other_ranks() -> None:
    assert reaches("mpi_kvbench.engine", "mpi_kvbench.mpi") == [
        "mpi_kvbench.engine.disagg -> mpi_kvbench.mpi.comm"]


def test_only_mpi_comm_imports_mpi4py() -> None:
    users = sorted(module_name(p) for p in PKG.rglob("*.py")
                   if any(t.split(".")[0] == "mpi4py" for t, _ in imports(p)))
    assert users == ["mpi_kvbench.mpi.comm"]


def test_function_local_imports_are_optional_dependencies_only() -> None:
    local = sorted(f"{module_name(p)}: {t}" for p in PKG.rglob("*.py") for t, top in imports(p)
                   if not top and module_name(p) not in LAZY_MODULES and t.split(".")[0] not in OPTIONAL)
    assert local == []
