"""What a user reads in a terminal (issue 18, section 3), from a real sweep run as a user would:
``python -m slimtune sweep`` with stdout and stderr redirected to files.

Redirected output holds no ANSI escape codes (Ray's coloured prefixes, its log deduplication's
``[repeated 2x across cluster]`` suffix); a failing trial is one line in the progress output with
its error class, message, trial number and the file that keeps its whole traceback, which that
file holds; ``SLIMTUNE_DEBUG=1`` shows the traceback as the worker prints it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimtune.search import load_results

ROOT = Path(__file__).resolve().parents[1]

HOOK = '''
import sys

import torch.nn as nn


def build(config):
    for stream in (sys.stdout, sys.stderr):  # the same line from every worker: what Ray deduplicates
        print("terminal-test: building a model", file=stream, flush=True)
    if config["width"] == 16:
        raise ValueError("width 16 is unlucky:\\nno kernel for it")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, config["width"]), nn.ReLU(),
                         nn.Linear(config["width"], config["output_dim"]))
'''

#: Ray's and slimtune's switches a developer's shell (or conftest.py) may hold: the sweep decides them.
DECIDED_HERE = ("RAY_ADDRESS", "RAY_COLOR_PREFIX", "RAY_DEDUP_LOGS", "TUNE_PRINT_ALL_TRIAL_ERRORS",
                "RAY_AIR_NEW_OUTPUT", "SLIMTUNE_DEBUG", "NO_COLOR")


def _sweep(base: Path, trials: int, **env: str) -> tuple[Path, str, str, int]:
    """A sweep of ``trials`` (the first configuration builds: width 8; width 16 raises), with
    stdout and stderr redirected to files: (sweep folder, stdout, stderr, exit code)."""
    (base / "proj").mkdir(parents=True)
    (base / "proj" / "unlucky.py").write_text(HOOK)
    spec = {"name": "terminal", "task": {"dataset": "digits", "model": "unlucky:build", "epochs": 1},
            "space": {"lr": 0.01, "width": {"choice": [8, 16]}},
            "search": {"trials": trials, "concurrency": 2, "sampler": "random", "seed": 0}}
    (base / "proj" / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_env = {k: v for k, v in os.environ.items() if k not in DECIDED_HERE}
    run_env.update(PYTHONPATH=str(ROOT), **env)
    out = base / "run"
    with open(base / "stdout.txt", "wb") as so, open(base / "stderr.txt", "wb") as se:
        code = subprocess.run([sys.executable, "-m", "slimtune", "sweep", str(base / "proj" / "spec.yaml"),
                               "--out", str(out)], cwd=base, env=run_env, stdout=so, stderr=se,
                              timeout=300, check=False).returncode
    read = lambda name: (base / name).read_bytes().decode(errors="replace")  # noqa: E731
    return out, read("stdout.txt"), read("stderr.txt"), code


@pytest.fixture(scope="module")
def plain_sweep(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("terminal"), trials=4)


def test_redirected_output_holds_no_escape_codes(plain_sweep):
    _, out, err, code = plain_sweep
    assert code == 0, err[-3000:]
    assert "\x1b" not in out and "\x1b" not in err, [ln for ln in (out + err).splitlines() if "\x1b" in ln][:5]
    # Every worker's line arrives as it came (Ray's deduplication would fold repeats into a coloured suffix).
    assert err.count("terminal-test: building a model") + out.count("terminal-test: building a model") >= 8


def test_a_failing_trial_is_one_line_naming_its_error_number_and_traceback_file(plain_sweep):
    run, out, err, _ = plain_sweep
    df = load_results(run)
    failed = df[df["status"] == "failed"]
    assert len(failed) >= 1 and (df["status"] == "ok").any(), df[["trial_number", "width", "status", "error"]]
    assert (failed["width"] == 16).all()
    assert "Traceback (most recent call last)" not in out + err, err[-3000:]
    for _, row in failed.iterrows():
        n = int(row["trial_number"])
        where = run / row["traceback"]
        lines = [ln for ln in (out + err).splitlines() if f"trial {n} failed" in ln]
        assert len(lines) == 1, lines
        assert "ValueError: width 16 is unlucky: no kernel for it" in lines[0], lines[0]
        assert f"(traceback: {where})" in lines[0], lines[0]
        assert row["error"] == "ValueError: width 16 is unlucky: no kernel for it"
        text = where.read_text()
        assert text.startswith("Traceback (most recent call last)"), text
        assert 'unlucky.py", line' in text and "no kernel for it" in text, text
    assert sorted(p.name for p in (run / "errors").iterdir()) == sorted(
        f"trial-{int(n)}.txt" for n in failed["trial_number"])


def test_slimtune_debug_shows_the_traceback(tmp_path):
    run, out, err, code = _sweep(tmp_path, trials=2, SLIMTUNE_DEBUG="1")
    assert code == 0, err[-3000:]
    df = load_results(run)
    assert (df["status"] == "failed").any(), df[["width", "status"]]
    assert "Traceback (most recent call last)" in err and 'unlucky.py", line' in err, err[-3000:]
    assert "ValueError: width 16 is unlucky:" in err
