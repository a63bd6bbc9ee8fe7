"""Nothing lost: a killed driver resumes, a finished sweep extends, dead workers are retried,
a sweep folder is locked while in use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from slimtune.cli import main
from slimtune.search import load_results

pytestmark = pytest.mark.ray_compat  # also run on the oldest Ray in CI (.ci/run)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ["lr", "batch_size", "depth", "width", "prune_method", "sparsity", "bits"]


def spec(name: str, trials: int, concurrency: int = 1, epochs: int = 3, **over) -> dict:
    s = {
        "name": name,
        "task": {"dataset": "digits", "model": "mlp", "epochs": epochs},
        "space": {"lr": {"log_uniform": [3e-3, 3e-2]}, "batch_size": 64, "depth": 1,
                  "width": {"choice": [16, 32, 64]}},
        "compress": {"prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.3, 0.9]}},
                     "quantize": {"bits": {"choice": [32, 8]}}},
        "search": {"trials": trials, "concurrency": concurrency, "sampler": "tpe", "seed": 0},
    }
    s.update(over)
    return s


def write(tmp: Path, s: dict) -> Path:
    p = tmp / f"{s['name']}.yaml"
    p.write_text(yaml.safe_dump(s))
    return p


def study_of(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def assert_study_matches_results(out: Path, name: str, budget: int) -> pd.DataFrame:
    df = load_results(out)
    study = study_of(out, name)
    interrupted = set(study.user_attrs.get("interrupted", []))
    ended = [t for t in study.trials if t.state.is_finished() and t.number not in interrupted]
    assert len(df) == budget == len(ended)
    assert df["trial_id"].is_unique and df["trial_number"].is_unique
    assert sorted(df["trial_number"]) == sorted(t.number for t in ended)
    ok = df[df["status"] == "ok"]
    assert not ok[PARAMS].astype(str).duplicated().any(), "a parameter set ran twice"
    for t in ended:
        row = df.set_index("trial_number").loc[t.number]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert row["status"] == "ok" and t.values[0] == pytest.approx(row["accuracy"])
        else:
            assert row["status"] == "failed"
    return df


def _wait_rows(out: Path | str, n: int, proc: subprocess.Popen, timeout: float = 300) -> pd.DataFrame:
    """The results at ``out`` (a folder or a URI) once ``n`` trials are ok, while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the sweep ended before it was killed ({proc.returncode})"
        try:
            df = load_results(out)
        except Exception:  # not written yet
            df = None
        if df is not None and (df["status"] == "ok").sum() >= n:
            return df
        time.sleep(0.5)
    raise AssertionError(f"fewer than {n} trials finished in {timeout}s")


@pytest.mark.slow
def test_killed_driver_resumes_without_loss_while_another_sweep_runs(ray_session, tmp_path):
    """SIGKILL a sweep's driver after 2 finished trials; a second sweep in another folder runs
    on undisturbed; `slimtune resume` finishes the first with every earlier trial kept once."""
    a, b = tmp_path / "a", tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "slimtune", "sweep"]
    pa = subprocess.Popen([*cmd, str(write(tmp_path, spec("kill-a", 6))), "--out", str(a), "--quiet"],
                          cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    pb = subprocess.Popen([*cmd, str(write(tmp_path, spec("side-b", 2, epochs=2))), "--out", str(b), "--quiet"],
                          cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        before = _wait_rows(a, 2, pa)
        # a second driver in the same folder is refused while the first holds it
        assert main(["resume", str(a)]) == 2
        os.killpg(pa.pid, signal.SIGKILL)  # the driver and the local Ray it started
        pa.wait(timeout=30)
    finally:
        if pa.poll() is None:
            os.killpg(pa.pid, signal.SIGKILL)
    assert pb.wait(timeout=300) == 0
    assert_study_matches_results(b, "side-b", 2)

    # the crashed driver left its lock: resume takes it over
    assert main(["resume", str(a), "--quiet"]) == 0
    df = assert_study_matches_results(a, "kill-a", 6)
    kept = df.set_index("trial_id")
    for _, row in before.iterrows():  # finished trials before the kill are unchanged
        assert row["trial_id"] in kept.index
        assert kept.loc[row["trial_id"], "accuracy"] == row["accuracy"]
        assert kept.loc[row["trial_id"], "size_bytes"] == row["size_bytes"]
    assert not (a / ".lock").exists()
    interrupted = study_of(a, "kill-a").user_attrs.get("interrupted", [])
    reruns = [t for t in study_of(a, "kill-a").trials if "rerun_of" in t.user_attrs]
    assert sorted(t.user_attrs["rerun_of"] for t in reruns) == sorted(interrupted)


@pytest.mark.slow
def test_extend_adds_trials_to_the_same_study(ray_session, tmp_path):
    out = tmp_path / "ext"
    assert main(["sweep", str(write(tmp_path, spec("ext", 2, concurrency=2, epochs=2))), "--out", str(out),
                 "--quiet"]) == 0
    first = load_results(out)
    n_study = len(study_of(out, "ext").trials)
    assert main(["extend", str(out), "--trials", "2", "--quiet"]) == 0
    df = assert_study_matches_results(out, "ext", 4)
    assert len(study_of(out, "ext").trials) == n_study + 2
    # the earlier rows are unchanged, and the new trials continue the numbering
    pd.testing.assert_frame_equal(df[df["trial_id"].isin(first["trial_id"])].reset_index(drop=True),
                                  first.reset_index(drop=True), check_dtype=False)
    assert sorted(df["trial_number"]) == [0, 1, 2, 3]
    # resuming a finished sweep runs nothing more
    assert main(["resume", str(out), "--quiet"]) == 0
    assert len(load_results(out)) == 4


def test_extend_rejects_a_bad_count(tmp_path, capsys):
    assert main(["extend", str(tmp_path), "--trials", "0"]) == 2
    assert "--trials" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_sweep_completes(ray_session, tmp_path):
    marker = tmp_path / "marker"
    marker.mkdir()
    s = spec("victim", 1, epochs=2, space={"lr": 0.01, "batch_size": 64, "depth": 1, "width": 16,
                                            "marker_dir": str(marker)})
    s["task"]["model"] = "tests.user_hooks:victim"
    s["compress"] = {}

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the trial has written its whole pid
            pid = (marker / "pid").read_text().strip() if (marker / "pid").is_file() else ""
            if pid.isdigit():
                (marker / "killed").write_text("yes")
                os.kill(int(pid), signal.SIGKILL)
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = tmp_path / "run"
    assert main(["sweep", str(write(tmp_path, s)), "--out", str(out), "--quiet"]) == 0
    t.join(timeout=5)
    assert (marker / "killed").exists()
    df = load_results(out)
    assert list(df["status"]) == ["ok"]
    assert df["node"].iloc[0]


def test_lock_is_exclusive_and_recovers_from_a_dead_holder(tmp_path):
    import json

    from slimtune.search.driver.sweep import SweepLock
    from slimtune.spaces import SpecError

    with SweepLock(tmp_path):
        with pytest.raises(SpecError, match="out: must not be in use"):
            SweepLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with SweepLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_atomic_write_leaves_old_or_new(tmp_path, monkeypatch):
    from slimtune.search.results.table import write_atomic

    target = tmp_path / "results.parquet"
    write_atomic(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
