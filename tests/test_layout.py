"""search/ is organised by job, and producers never import presenters.

The path of a sweep reads in the file names: ``task`` (data, training loop) and ``deploy`` (the
deployable forms of a compressed model) -> ``trial`` (where
training meets compression) -> ``searcher`` (what to try next) -> ``driver`` (run/resume/extend, the
one writer) -> ``results`` (schema, load_results, Pareto front) -> ``present`` (plot, report,
export, predict). Checked on import statements, statically, so a lazy import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "search"

#: What each part of search/ may import from search/ (besides itself and the storage seam).
ALLOWED = {
    "task": set(),
    "deploy": set(),  # the deployable forms of a compressed model (ONNX, C): torch and onnx only
    "trial": {"task", "deploy"},
    "results": set(),
    "searcher": {"task", "trial", "results"},
    "driver": {"task", "trial", "searcher", "results", "deploy"},
    "present": {"task", "trial", "results", "deploy"},
}
SEAM = {"storage", "lease"}  # the filesystem seam and the one lease/process check: everyone may use them


def _part(path: Path) -> str:
    rel = path.relative_to(SEARCH).parts
    return rel[0].removesuffix(".py")


def _search_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            assert parts[0] != "search", f"{path}: a top-level 'search' import ({name}); slimtune.search is the name"
            if parts[:2] == ["slimtune", "search"] and len(parts) > 2:
                found.add(parts[2])
                continue
            if False:
                found.add(parts[1])
    return found


def test_every_module_of_search_is_in_a_known_part():
    parts = {_part(p) for p in SEARCH.rglob("*.py")} - {"__init__"}
    assert parts <= set(ALLOWED) | SEAM, parts - set(ALLOWED) - SEAM


def test_producers_never_import_presenters_and_parts_import_only_downstream():
    bad = []
    for path in sorted(SEARCH.rglob("*.py")):
        part = _part(path)
        if part not in ALLOWED:
            continue
        for imported in _search_imports(path) - {part} - SEAM:
            if imported not in ALLOWED[part]:
                bad.append(f"{path.relative_to(ROOT)} imports search.{imported}")
    assert bad == []


def test_the_driver_loads_without_the_presentation_code():
    import subprocess
    import sys

    code = ("import sys, slimtune.search.driver.sweep; "
            "print([m for m in sys.modules if m.startswith('slimtune.search.present')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"
