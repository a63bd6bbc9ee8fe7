"""End-to-end sweeps on a real (shared) Ray with real training on tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from slimtune import compress
from slimtune.cli import main
from slimtune.search import load_results, pareto_front

pytestmark = pytest.mark.ray_compat  # also run on the oldest Ray in CI (.ci/run)

PARAMS = ["lr", "batch_size", "depth", "width", "weight_decay", "epochs", "prune_method", "sparsity",
          "finetune_epochs", "bits", "per_channel", "symmetric"]


def _write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return p


def digits_spec(**over) -> dict:
    spec = {
        "name": "t-digits",
        "task": {"dataset": "digits", "model": "mlp", "epochs": 2},
        "objectives": {"accuracy": "max", "size_bytes": "min"},
        "constraints": {"size_bytes": {"max": 1_000_000}},
        "space": {"lr": {"log_uniform": [3e-3, 3e-2]}, "batch_size": 64, "depth": {"int": [1, 2]},
                  "width": {"choice": [16, 32]}},
        "compress": {"prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.5, 0.9]},
                               "finetune_epochs": 1},
                     "quantize": {"bits": {"choice": [32, 8, 4]}}},
        "search": {"trials": 4, "concurrency": 2, "sampler": "tpe", "seed": 0},
    }
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def digits_run(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    out = tmp / "run"
    assert main(["sweep", str(_write(tmp, digits_spec())), "--out", str(out), "--quiet"]) == 0
    return out


def test_sweep_writes_results_study_and_artifacts(digits_run):
    df = load_results(digits_run)
    assert len(df) == 4
    assert list(df.columns[:3]) == ["trial_id", "trial_number", "status"]
    for col in PARAMS + ["accuracy", "test_accuracy", "size_bytes", "dense_bytes", "params", "nonzero_params",
                         "train_seconds", "node", "error", "artifact", "seed", "compression_ratio", "feasible"]:
        assert col in df.columns, col
    assert (df["status"] == "ok").all()
    assert sorted(df["trial_number"]) == [0, 1, 2, 3]
    assert df["trial_id"].is_unique and df["seed"].is_unique
    assert df["accuracy"].between(0, 1).all() and df["test_accuracy"].between(0, 1).all()
    assert df["error"].isna().all()
    # conditional parameters: sparsity only where pruning was chosen
    pruned = df["prune_method"] == "magnitude"
    assert df.loc[pruned, "sparsity"].notna().all() and df.loc[~pruned, "sparsity"].isna().all()
    assert set(df["depth"]) <= {1, 2} and set(df["width"]) <= {16, 32}
    for _, row in df.iterrows():
        path = digits_run / row["artifact"]
        # size_bytes is the artifact file's length, and the artifact reloads to a working model
        assert path.stat().st_size == row["size_bytes"]
        assert row["size_bytes"] <= row["dense_bytes"]
        assert row["params"] >= row["nonzero_params"]
        model = compress.load(path)
        import torch

        out = model(torch.zeros(3, 8, 8))
        assert out.shape == (3, 10)
    assert (digits_run / "study.db").is_file()
    meta = json.loads((digits_run / "sweep.json").read_text())
    assert meta["objectives"] == {"accuracy": "max", "size_bytes": "min"}


def test_study_agrees_with_results(digits_run):
    import optuna

    study = optuna.load_study(study_name="t-digits", storage=f"sqlite:///{digits_run / 'study.db'}")
    df = load_results(digits_run)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    by_number = df.set_index("trial_number")
    for t in done:
        row = by_number.loc[t.number]
        assert t.values == pytest.approx([row["accuracy"], row["size_bytes"]])
        assert t.user_attrs["ray_trial_id"] == row["trial_id"]
        assert t.constraints == {"size_bytes": pytest.approx(row["size_bytes"] - 1_000_000)}
        for name, value in t.params.items():
            assert row[name] == pytest.approx(value) if isinstance(value, float) else row[name] == value


def test_pareto_front_uses_the_sweeps_objectives(digits_run):
    df = load_results(digits_run)
    front = pareto_front(df)
    assert 1 <= len(front) <= len(df)
    # no front member is dominated by any finished trial
    for _, f in front.iterrows():
        for _, r in df.iterrows():
            assert not (r["accuracy"] >= f["accuracy"] and r["size_bytes"] <= f["size_bytes"]
                        and (r["accuracy"] > f["accuracy"] or r["size_bytes"] < f["size_bytes"]))
    # sorted best accuracy first
    assert list(front["accuracy"]) == sorted(front["accuracy"], reverse=True)


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_results_cli_formats(digits_run, capsys, fmt):
    assert main(["results", str(digits_run), "--pareto", "--format", fmt]) == 0
    out = capsys.readouterr().out
    front = pareto_front(load_results(digits_run))
    if fmt == "csv":
        import io

        got = pd.read_csv(io.StringIO(out))
        assert list(got["trial_id"]) == list(front["trial_id"])
    elif fmt == "json":
        got = json.loads(out)
        assert [r["trial_id"] for r in got] == list(front["trial_id"])
    else:
        assert "accuracy" in out and "size_bytes" in out


@pytest.mark.slow
def test_same_seed_same_trial_configs(digits_run, tmp_path):
    """A second sweep with the same seed samples the same first configurations (sampler seeded)."""
    out = tmp_path / "again"
    spec = digits_spec(search={"trials": 2, "concurrency": 1, "sampler": "tpe", "seed": 0})
    assert main(["sweep", str(_write(tmp_path, spec)), "--out", str(out), "--quiet"]) == 0
    a = load_results(digits_run).set_index("trial_number")
    b = load_results(out).set_index("trial_number")
    for n in (0, 1):
        assert a.loc[n, "lr"] == b.loc[n, "lr"] and a.loc[n, "width"] == b.loc[n, "width"]
        assert a.loc[n, "seed"] == b.loc[n, "seed"]


def test_bad_spec_exits_2_before_anything_is_written(tmp_path, capsys):
    spec = digits_spec()
    spec["compress"]["prune"]["sparsity"] = {"uniform": [0.5, 1.5]}
    out = tmp_path / "never"
    assert main(["sweep", str(_write(tmp_path, spec)), "--out", str(out)]) == 2
    # (Ray workers of earlier tests may still log to this process's stderr: keep our lines.)
    ours = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("slimtune:")]
    assert len(ours) == 1 and "compress.prune.sparsity" in ours[0] and "1.5" in ours[0]
    assert not out.exists()


def test_out_folder_with_a_sweep_is_refused(digits_run, tmp_path, capsys):
    before = (digits_run / "results.parquet").read_bytes()
    assert main(["sweep", str(_write(tmp_path, digits_spec())), "--out", str(digits_run)]) == 2
    assert "out:" in capsys.readouterr().err
    assert (digits_run / "results.parquet").read_bytes() == before


@pytest.mark.ml
@pytest.mark.slow
def test_csv_regression_sweep(ray_session, tmp_path, seed_offset):
    # r2 > 0.8 on a noisy linear target: 20 trainings over sweep seeds 0..9 all reached r2 >= 0.987.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=300)
    pd.DataFrame({**{f"f{i}": x[:, i] for i in range(4)}, "price": y}).to_csv(tmp_path / "house.csv", index=False)
    spec = {
        "name": "t-reg",
        "task": {"dataset": "house.csv", "target": "price", "model": "mlp", "epochs": 15},
        "objectives": {"r2": "max", "size_bytes": "min"},
        "space": {"lr": 0.01, "batch_size": 32, "depth": 1, "width": {"choice": [16, 32]}},
        "search": {"trials": 2, "concurrency": 2, "sampler": "random", "seed": 1 + seed_offset},
    }
    out = tmp_path / "run"
    assert main(["sweep", str(_write(tmp_path, spec)), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert (df["status"] == "ok").all() and len(df) == 2
    assert df["r2"].min() > 0.8 and df["test_r2"].notna().all()
    assert df["accuracy"].isna().all()
    # the training statistics travel with an export: predict on the raw CSV gives prices
    from slimtune.search import export_trial, predict_csv

    model = export_trial(out, int(df["trial_number"].iloc[0]), "onnx", tmp_path / "house.onnx")
    pred = predict_csv(model, tmp_path / "house.csv")["prediction"].to_numpy()
    r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert r2 > 0.8


@pytest.mark.ml
@pytest.mark.slow
def test_user_hooks_for_data_and_model(ray_session, tmp_path, seed_offset):
    # Trained long enough that the hook's blobs separate on any seed: 20 trainings over sweep
    # seeds 0..9 all scored validation accuracy 1.0 (at 3 epochs, lr 0.01 some scored 0.0-0.2).
    spec = {
        "name": "t-hooks",
        "task": {"dataset": "tests.user_data:blobs", "model": "tests.user_hooks:residual_net", "epochs": 20},
        "space": {"lr": 0.03, "batch_size": 32, "width": {"choice": [8, 16]}, "depth": 1, "gain": 1.0},
        "compress": {"prune": {"method": "magnitude", "sparsity": 0.5}, "quantize": {"bits": 8}},
        "search": {"trials": 2, "concurrency": 2, "sampler": "random", "seed": seed_offset},
    }
    out = tmp_path / "run"
    assert main(["sweep", str(_write(tmp_path, spec)), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert df["accuracy"].min() > 0.5
    assert (df["sparsity"] == 0.5).all() and (df["bits"] == 8).all()
    assert (df["gain"] == 1.0).all()
    model = compress.load(out / df["artifact"].iloc[0], trust_code=True)  # written just now from our spec
    assert sum(p.numel() for p in model.parameters()) == df["params"].iloc[0]


def test_failing_trials_are_rows_and_the_sweep_goes_on(ray_session, tmp_path):
    """A trial raising in user code and one with a NaN loss are failed rows with their errors; others finish."""
    spec = {
        "name": "t-fail",
        "task": {"dataset": "tests.user_data:blobs", "model": "tests.user_hooks:fragile", "epochs": 2},
        "space": {"lr": 0.01, "batch_size": 32, "width": {"choice": [16, 13, 7]}, "depth": 1},
        "search": {"trials": 6, "concurrency": 2, "sampler": "random", "seed": 4},
    }
    out = tmp_path / "run"
    assert main(["sweep", str(_write(tmp_path, spec)), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert len(df) == 6 and set(df["width"]) == {16, 13, 7}
    assert (df.loc[df["width"] == 16, "status"] == "ok").all()
    raised = df[df["width"] == 13]
    assert (raised["status"] == "failed").all()
    assert all("width 13 is unlucky" in e for e in raised["error"])
    nan = df[df["width"] == 7]
    assert (nan["status"] == "failed").all() and all("diverged" in e for e in nan["error"])
    assert df.loc[df["status"] == "failed", "size_bytes"].isna().all()
    import optuna

    study = optuna.load_study(study_name="t-fail", storage=f"sqlite:///{out / 'study.db'}")
    states = {t.number: t.state for t in study.trials}
    for _, row in df.iterrows():
        want = optuna.trial.TrialState.COMPLETE if row["status"] == "ok" else optuna.trial.TrialState.FAIL
        assert states[row["trial_number"]] == want
