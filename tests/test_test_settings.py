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


def test_seed_offset_fixture_defaults_to_the_environment(seed_offset: int) -> None:
    assert seed_offset == int(os.environ.get("SLIMTUNE_TEST_SEED_OFFSET") or 0)
