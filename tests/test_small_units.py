"""Small units: no library module over 400 lines, no function over 60 lines, and no function
with more than five parameters (those take a small frozen dataclass instead).

Each exception is a line of ``tests/small_units_allowlist.txt`` with its reason; an entry that no
longer needs to be there fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spaces", "compress", "search", "cluster", "slimtune")
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMS = 400, 60, 5
ALLOWLIST = Path(__file__).with_name("small_units_allowlist.txt")


def _allowlist() -> dict[str, str]:
    entries = {}
    for line in ALLOWLIST.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = line.partition("  # ")
        assert sep and reason.strip(), f"allowlist entry without a reason: {line!r}"
        entries[key.strip()] = reason.strip()
    return entries


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")])


def violations() -> dict[str, str]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            source = path.read_text()
            lines = len(source.splitlines())
            if lines > MAX_MODULE_LINES:
                found[f"{rel} module"] = f"{lines} lines"
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{rel}:{node.name} lines"] = f"{length} lines"
                if _params(node) > MAX_PARAMS:
                    found[f"{rel}:{node.name} params"] = f"{_params(node)} parameters"
    return found


def test_modules_and_functions_are_small_or_allowlisted_with_a_reason():
    allowed = _allowlist()
    found = violations()
    new = {k: v for k, v in found.items() if k not in allowed}
    assert new == {}, f"over the limits and not in {ALLOWLIST.name}: {new}"


def test_the_allowlist_only_shrinks():
    stale = sorted(set(_allowlist()) - set(violations()))
    assert stale == [], f"within the limits now; remove from {ALLOWLIST.name}: {stale}"


def test_the_check_catches_a_long_function(tmp_path, monkeypatch):
    pkg = tmp_path / "spaces"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (pkg / "big.py").write_text(f"def f(a, b, c, d, e, g):\n{body}\n")
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "ROOT", tmp_path)
    monkeypatch.setattr(here, "PACKAGES", ("spaces",))
    assert violations() == {"spaces/big.py:f lines": "71 lines", "spaces/big.py:f params": "6 parameters"}
