"""The library's layering, read from the source (no imports run; no Ray).

import-linter checks the contracts of pyproject.toml's [tool.importlinter] (``lint-imports``):
  - the library never imports the entrypoints (jobs, serve, tune, benchmarks);
  - the model (gref.model) imports nothing above it: no baselines, training, serving, evaluation,
    simulator, click models, tracking, loop, pipeline or experiments;
  - a job never imports another job (shared logic lives in gref).
This file adds what import-linter has no contract for:
  - no import cycles between the library's modules (imports under ``if TYPE_CHECKING:`` are
    annotations, not dependencies);
  - a job stays thin: argparse -> config -> one library call -> print (at most JOB_LINES lines).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINTS = ("jobs", "serve", "tune", "benchmarks")
JOB_LINES = 80  # a job longer than this holds library logic (issue 35)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports (at any depth: lazy imports count), as dotted names; ``from
    pkg import name`` counts as pkg.name (a submodule or not: resolved against the known modules)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def module_graph() -> dict[str, set[str]]:
    """Module -> the modules of this repository it imports (library, jobs, serve, tune, benchmarks)."""
    files = {}
    for path in (ROOT / "platform").rglob("*.py"):
        files[".".join(path.relative_to(ROOT / "platform").with_suffix("").parts)] = path
    for top in ENTRYPOINTS:
        for path in (ROOT / top).rglob("*.py"):
            files[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    names = {m.removesuffix(".__init__") for m in files}
    graph = {}
    for module, path in files.items():
        name = module.removesuffix(".__init__")
        package = name if module.endswith("__init__") else name.rsplit(".", 1)[0]
        graph[name] = {m for m in imports_of(path, package) if m in names and m != name}
    return graph


def test_the_import_reader_skips_annotations_and_resolves_names(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nimport gref.data\nfrom gref.model import decoding\n"
                   "if TYPE_CHECKING:\n    from gref.train import steps\n"
                   "def f():\n    from gref.sim.world import World\n")
    assert imports_of(src, "gref") >= {"gref.data", "gref.model", "gref.model.decoding", "gref.sim.world",
                                       "gref.sim.world.World"}
    assert not any(m.startswith("gref.train") for m in imports_of(src, "gref"))


def test_the_import_linter_contracts_are_kept():
    run = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"},
                         timeout=300, check=False)
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def test_the_library_has_no_import_cycles():
    graph = {m: {d for d in deps if d.startswith("gref")} for m, deps in module_graph().items() if m.startswith("gref")}
    # a package's __init__ re-exporting its submodules is not a cycle of the submodules
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def strongly_connected(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                strongly_connected(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            strongly_connected(v)
    assert not cycles


def test_every_job_is_thin():
    long = {p.name: n for p in (ROOT / "jobs").glob("*.py") if (n := len(p.read_text().splitlines())) > JOB_LINES}
    assert not long, f"jobs over {JOB_LINES} lines (move their logic into gref): {long}"
