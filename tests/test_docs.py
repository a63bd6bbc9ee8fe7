"""The docs site builds strictly, and its generated reference covers every declaration.

`mkdocs build --strict` fails on any warning; mkdocs.yml turns a broken link or anchor and a page
missing from the nav into warnings, so each of those fails here (and in .ci/run).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from slimtune.spaces import METHODS, METRIC_TABLE, METRICS
from slimtune.spaces._spec import SCHEDULE_DEFAULTS, SPACE_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root,
                          capture_output=True, text=True, timeout=300, check=False)


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path) -> Path:
    """The docs' sources (mkdocs.yml, docs/ and the files the hook copies in) in a folder of their own."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copy(ROOT / "mkdocs.yml", root)
    shutil.copy(ROOT / "ARCHITECTURE.md", root)
    (root / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "README.md", root / "benchmarks")
    return root


def test_the_docs_build_strictly(tmp_path):
    built = _build(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stderr[-3000:]
    for page in ("reference/spec", "reference/results", "benchmarks", "architecture", "getting-started"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_a_broken_link_fails_the_build(tmp_path):
    root = _copy(tmp_path)
    with open(root / "docs" / "security.md", "a", encoding="utf-8") as f:
        f.write("\nSee [nowhere](no-such-page.md) and [an anchor](compression.md#no-such-anchor).\n")
    built = _build(root, tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-page.md" in built.stderr and "no-such-anchor" in built.stderr, built.stderr[-3000:]


def test_a_page_missing_from_the_nav_fails_the_build(tmp_path):
    root = _copy(tmp_path)
    (root / "docs" / "orphan.md").write_text("# Orphan\n")
    built = _build(root, tmp_path / "site")
    assert built.returncode != 0 and "orphan.md" in built.stderr, built.stderr[-3000:]


def test_the_spec_reference_lists_every_method_key_metric_and_space_default():
    page = _generator().spec_reference()
    for method in METHODS.values():
        for key in method.keys:
            assert f"`compress.{method.name}.{key.name}`" in page, (method.name, key.name)
    for metric in METRICS:
        assert f"| `{metric}` |" in page, metric
    for key, value in {**SPACE_DEFAULTS, **SCHEDULE_DEFAULTS}.items():
        assert f"| `space.{key}` | `{value:g}` |" in page if not isinstance(value, str) else \
            f"| `space.{key}` | `{value}` |" in page, (key, value)


def test_the_results_schema_lists_every_metric_and_column_a_sweep_writes():
    from slimtune.search.results.rows import param_names
    from slimtune.search.results.table import frame
    from slimtune.spaces import parse_spec

    page = _generator().results_schema()
    for metric in METRIC_TABLE.values():
        assert f"| `{metric.name}` |" in page, metric.name
        if metric.split:
            assert f"| `test_{metric.name}` |" in page, metric.name
    spec = parse_spec({"name": "x", "task": {"dataset": "digits"}})
    for column in frame([], param_names(spec)).columns:
        assert f"| `{column}` |" in page, column
