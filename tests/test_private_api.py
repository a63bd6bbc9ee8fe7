"""The library reads and writes no private (`_`-prefixed) attribute of Ray, Optuna or torch.

Statically, an object's library is not known, so the check is stricter than that: in spaces/,
compress/, search/, cluster/ and slimtune/ every access ``x._name`` (or ``getattr(x, "_name")``,
also set/has/delattr) is flagged unless ``x`` is ``self``/``cls`` (our own classes) or one of our
packages, and so is an import of a private module or name of ray, optuna or torch. What remains
is listed, each with its reason, in ``tests/private_api_allowlist.txt``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spaces", "compress", "search", "cluster", "slimtune")
FOREIGN = ("ray", "optuna", "torch")
ALLOWLIST = ROOT / "tests" / "private_api_allowlist.txt"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_accesses(source: str) -> list[str]:
    """The private names of other code that ``source`` touches, as expressions."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if _root(node.value) not in ("self", "cls", *PACKAGES):
                hits.append(ast.unparse(node))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            hits.append(ast.unparse(node))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FOREIGN:
            if any(_private(p) for p in node.module.split(".")) or any(_private(a.name) for a in node.names):
                hits.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            hits += [a.name for a in node.names
                     if a.name.split(".")[0] in FOREIGN and any(_private(p) for p in a.name.split("."))]
    return hits


def allowlist() -> dict[str, str]:
    entries = {}
    for line in ALLOWLIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        entry, _, reason = line.partition("  # ")
        assert reason.strip(), f"allowlist entry without a reason: {line!r}"
        entries[entry.strip()] = reason.strip()
    return entries


def library_accesses() -> set[str]:
    found = set()
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found |= {f"{rel}: {hit}" for hit in private_accesses(path.read_text())}
    return found


def test_no_private_attribute_of_ray_optuna_or_torch_outside_the_allowlist():
    found, allowed = library_accesses(), allowlist()
    assert not found - set(allowed), f"private names touched (use a public API or list them with a reason): " \
                                     f"{sorted(found - set(allowed))}"
    assert not set(allowed) - found, f"allowlist entries no longer used (remove them): {sorted(set(allowed) - found)}"


def test_the_check_flags_what_the_searcher_once_did():
    planted = '''
import optuna
from ray.tune.search.optuna import OptunaSearch
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

def resume(study, t, d, searcher):
    study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
    ok = d._contains(d.to_internal_repr(1.0))
    trials = getattr(searcher, "_ot_trials")
    return self_like._x if ok else None
'''
    hits = private_accesses(planted)
    for want in ("study._storage", "t._trial_id", "d._contains", "getattr(searcher, '_ot_trials')", "self_like._x",
                 "from optuna.study._constrained_optimization import _CONSTRAINTS_KEY"):
        assert want in hits, (want, hits)
    # our own private names stay allowed
    assert private_accesses("class A:\n    def f(self):\n        return self._x + cls._y\n"
                            "import search.driver.sweep\nv = search.driver.sweep.LOCK\n") == []
