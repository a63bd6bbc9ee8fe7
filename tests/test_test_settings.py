"""The test suite's own settings: SLIMTUNE_TEST_SEED_OFFSET and SLIMTUNE_TEST_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _collect(quiet: str = "-q", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", quiet, "--collect-only", "-p", "no:cacheprovider",
                           "tests/test_progress.py"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("name, value, rule", [
    ("SLIMTUNE_TEST_SEED_OFFSET", "abc", ">= 0"), ("SLIMTUNE_TEST_SEED_OFFSET", "-1", ">= 0"),
    ("SLIMTUNE_TEST_THREADS", "0", ">= 1"), ("SLIMTUNE_TEST_THREADS", "2.5", ">= 1"),
])
def test_a_bad_setting_stops_the_run_with_one_line(name: str, value: str, rule: str) -> None:
    got = _collect(**{name: value})
    assert got.returncode == 4, got.stdout + got.stderr
    lines = [ln for ln in (got.stdout + got.stderr).splitlines() if ln.strip()]
    assert lines == [f"ERROR: {name} must be an integer {rule}, but got {name}={value!r}"], lines


def test_good_settings_reach_the_tests() -> None:
    got = _collect("-v", SLIMTUNE_TEST_SEED_OFFSET="3", SLIMTUNE_TEST_THREADS="1")  # -v shows the header
    assert got.returncode == 0, got.stdout + got.stderr
    assert "slimtune: seed offset 3, torch threads 1" in got.stdout


CHILD_TEST = """
import torch


def test_what_an_ml_test_sees(seed_offset):
    print(f"SEEN seeds={list(range(seed_offset, seed_offset + 3))} threads={torch.get_num_threads()}")
"""


@pytest.mark.parametrize("env, seeds, threads", [
    ({}, [0, 1, 2], None),
    ({"SLIMTUNE_TEST_SEED_OFFSET": "3", "SLIMTUNE_TEST_THREADS": "3"}, [3, 4, 5], 3),
])
def test_the_settings_reach_a_test_through_its_fixture(tmp_path: Path, env: dict, seeds: list, threads) -> None:
    """A test run under the suite's conftest sees the offset in its ``seed_offset`` fixture (0 unset)
    and runs at the torch thread count asked for."""
    (tmp_path / "test_child.py").write_text(CHILD_TEST)
    base = {k: v for k, v in os.environ.items() if k not in ("SLIMTUNE_TEST_SEED_OFFSET", "SLIMTUNE_TEST_THREADS")}
    got = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "tests.conftest",
                          "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120, check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    seen = [ln for ln in got.stdout.splitlines() if ln.startswith("SEEN ")]
    assert len(seen) == 1, got.stdout
    assert f"seeds={seeds}" in seen[0], seen
    if threads is not None:
        assert f"threads={threads}" in seen[0], seen
