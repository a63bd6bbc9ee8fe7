"""Same spec, same seed, same result.

* The data split is a property of the task (``task.split_seed``), recorded in ``sweep.json``;
  a sweep written before keeps the split it was made with.
* At ``concurrency: 1`` two runs of one spec (ladder and early stopping included), one of them
  in another process, give the same rows and byte-identical artifacts.
* ``tests/fixtures/sweep_v1``, a sweep folder written by an earlier slimtune, still loads,
  resumes and extends.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from torch import nn

from slimtune import compress
from slimtune.search import evaluate, load_data, load_results, prepare, resume_sweep, run_sweep
from slimtune.search.searcher.observe import warm_start
from slimtune.search.task.data import sweep_split_seed
from slimtune.search.trial import TrialSetup, run_trial
from slimtune.spaces import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "sweep_v1"
#: Columns that may differ between two runs: Ray's ids, the host, and wall-clock times.
VARYING = ["trial_id", "node", "ended_at", "train_seconds", "latency_ms"]


def quickstart_like(seed: int = 0, **task) -> dict:
    """``examples/digits.yaml`` in miniature: ladder, early stopping, a size constraint."""
    return {
        "name": "repro",
        "task": {"dataset": "digits", "model": "mlp", "epochs": 3, **task},
        "objectives": {"accuracy": "max", "size_bytes": "min"},
        "constraints": {"size_bytes": {"max": 6000}},
        "space": {"lr": {"log_uniform": [1e-3, 3e-2]}, "batch_size": {"choice": [32, 64]},
                  "depth": {"int": [1, 2]}, "width": {"choice": [16, 32, 64]}},
        "compress": {"prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.3, 0.95]},
                               "finetune_epochs": 1},
                     "quantize": {"bits": {"choice": [32, 8, 4]}}},
        "search": {"trials": 6, "concurrency": 1, "sampler": "tpe", "seed": seed, "ladder": 1,
                   # strict enough that some trials of six are stopped
                   "early_stop": {"grace_epochs": 1, "eta": 2, "min_peers": 1}},
        "resources": {"cpu": 1, "gpu": 0},
    }


def comparable(out: Path) -> tuple[pd.DataFrame, dict[int, str]]:
    """The rows without the columns that may vary (in artifact paths the trial id is
    replaced), and the sha256 of each artifact by trial number."""
    df = load_results(out).sort_values("trial_number").reset_index(drop=True)
    hashes = {int(r["trial_number"]): hashlib.sha256((out / r["artifact"]).read_bytes()).hexdigest()
              for _, r in df.iterrows() if isinstance(r["artifact"], str)}
    df["artifact"] = [a.replace(t, "<id>") if isinstance(a, str) else a for a, t in zip(df["artifact"], df["trial_id"])]
    return df.drop(columns=[c for c in VARYING if c in df.columns]), hashes


# ---------------------------------------------------------------------------------------
# The split belongs to the task


def test_split_is_the_tasks_whatever_the_search_seed(tmp_path):
    a, _ = prepare(parse_spec(quickstart_like(seed=0)), tmp_path / "a")
    b, _ = prepare(parse_spec(quickstart_like(seed=7)), tmp_path / "b")
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c, _ = prepare(parse_spec(quickstart_like(seed=0, split_seed=1)), tmp_path / "c")
    assert not np.array_equal(a.y_test, c.y_test)
    np.testing.assert_array_equal(c.x_test, load_data(parse_spec(quickstart_like(split_seed=1)).task).x_test)


def test_split_seed_is_validated():
    with pytest.raises(SpecError, match=r"task\.split_seed: must be an integer >= 0, but got -1"):
        parse_spec(quickstart_like(split_seed=-1))


def test_sweep_split_seed_recorded_or_the_old_search_seed():
    assert sweep_split_seed({"split_seed": 5, "spec": {"search": {"seed": 3}}}) == 5
    assert sweep_split_seed({"spec": {"search": {"seed": 3}}}) == 3  # written before split_seed existed
    assert sweep_split_seed({"spec": {"task": {"dataset": "digits"}}}) == 0  # the search seed's default


# ---------------------------------------------------------------------------------------
# Two runs, one result


def python_random_mlp(config: dict) -> nn.Module:
    """A model hook that draws its width from Python's global RNG."""
    width = random.randrange(8, 64)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, config["output_dim"]))


def test_trial_seeds_the_global_rngs_a_model_hook_draws_from(tmp_path):
    data = load_data(parse_spec(quickstart_like()).task)
    config = {"lr": 0.01, "batch_size": 64, "epochs": 1, "bits": 8, "seed": 11, "trial_number": 0}
    finals, state = [], random.getstate()
    try:
        for k in range(2):
            random.seed(k)  # whatever state the worker process was left in
            setup = TrialSetup(out_dir=str(tmp_path / str(k)), model="tests.test_repro:python_random_mlp",
                               kind=data.kind)
            finals.append(run_trial(dict(config), data, setup, report=lambda metrics: None))
    finally:
        random.setstate(state)
    a, b = finals
    assert (a["params"], a["accuracy"], a["size_bytes"]) == (b["params"], b["accuracy"], b["size_bytes"])
    assert (tmp_path / "0" / a["artifact"]).read_bytes() == (tmp_path / "1" / b["artifact"]).read_bytes()


@pytest.mark.slow
def test_same_spec_same_seed_same_rows_and_artifacts(ray_session, tmp_path):
    """Run 1 in this process, run 2 through the CLI in another (other hash seed) on the same Ray."""
    spec = quickstart_like()
    run_sweep(parse_spec(spec), tmp_path / "one", quiet=True)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-m", "slimtune", "sweep", str(path), "--out", str(tmp_path / "two"),
                           "--quiet", "--address", ray_session.get_runtime_context().gcs_address],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (a, ha), (b, hb) = comparable(tmp_path / "one"), comparable(tmp_path / "two")
    assert {"ok", "stopped"} <= set(a["status"]), "the spec should exercise early stopping"
    assert a["parent"].notna().any(), "the spec should exercise the ladder"
    pd.testing.assert_frame_equal(a, b)
    assert ha == hb and len(ha) == (a["status"] == "ok").sum()
    assert json.loads((tmp_path / "two" / "sweep.json").read_text())["split_seed"] == 0


# ---------------------------------------------------------------------------------------
# A sweep folder written by an earlier slimtune


@pytest.fixture
def old_sweep(tmp_path) -> Path:
    out = tmp_path / "sweep_v1"
    shutil.copytree(FIXTURE, out)
    return out


def test_fixture_loads_and_its_artifacts_reproduce_its_test_metrics(old_sweep):
    meta = json.loads((old_sweep / "sweep.json").read_text())
    assert "split_seed" not in meta  # written before the split had its own seed
    df = load_results(old_sweep)
    assert len(df) == 7 and set(df["status"]) == {"ok", "infeasible"} and df["parent"].notna().sum() == 3
    # the split it was made with is the one a resume loads: each artifact scores its recorded test accuracy
    spec = parse_spec(meta["spec"])
    data = load_data(spec.task, sweep_split_seed(meta))
    for _, row in df[df["status"] == "ok"].iterrows():
        model = compress.load(old_sweep / row["artifact"])
        assert evaluate(model, data.x_test, data.y_test, data.kind)["accuracy"] == pytest.approx(row["test_accuracy"])


def test_fixture_resumes_with_nothing_to_do_and_keeps_its_split(old_sweep):
    meta = json.loads((old_sweep / "sweep.json").read_text())
    meta["spec"]["search"]["seed"] = 3  # as if it had been made with search seed 3 (no Ray starts: budget met)
    (old_sweep / "sweep.json").write_text(json.dumps(meta))
    before = load_results(old_sweep)
    after = resume_sweep(old_sweep, quiet=True)
    pd.testing.assert_frame_equal(after.drop(columns="ended_at", errors="ignore"),
                                  before.drop(columns="ended_at", errors="ignore"), check_dtype=False)
    meta = json.loads((old_sweep / "sweep.json").read_text())
    assert meta["split_seed"] == 3 and meta["sessions"] == 2 and meta["trials"] == 3


def test_fixture_extends(ray_session, old_sweep):
    before = load_results(old_sweep)
    df = resume_sweep(old_sweep, add_trials=1, quiet=True)
    new = df[~df["trial_id"].isin(before["trial_id"])]
    assert len(new) >= 1 and (new["trial_number"] > before["trial_number"].max()).all()
    assert new["parent"].isna().sum() == 1  # one more training (and its ladder rung, when ok)
    kept = df[df["trial_id"].isin(before["trial_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.drop(columns="ended_at", errors="ignore"),
                                  before.drop(columns="ended_at", errors="ignore"), check_dtype=False)
    meta = json.loads((old_sweep / "sweep.json").read_text())
    assert meta["split_seed"] == 0 and meta["trials"] == 4


def test_warm_start_observes_an_old_sweep_only_on_the_split_it_was_made_with():
    def seeded(split_seed: int) -> tuple[int, int]:
        raw = json.loads((FIXTURE / "sweep.json").read_text())["spec"]
        spec = parse_spec({**raw, "task": {**raw["task"], "split_seed": split_seed}})
        return warm_start(optuna.create_study(directions=["maximize", "minimize"]), spec, FIXTURE)

    enqueued, observed = seeded(0)  # the old sweep's split: search seed 0
    assert enqueued >= 1 and observed == 6
    enqueued, observed = seeded(1)  # another split: its accuracies do not apply
    assert enqueued >= 1 and observed == 0
