"""The searcher's own capabilities: zero-cost feasibility, two-objective early stopping,
the ladder, warm start."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from slimtune.cli import main
from slimtune.search import load_data, load_results
from slimtune.search.searcher.early_stop import ParetoHalving
from slimtune.search.searcher.size_prediction import predict, surely_infeasible
from slimtune.spaces import parse_spec

pytestmark = pytest.mark.ray_compat  # also run on the oldest Ray in CI (.ci/run)


def spec_dict(name: str, **search) -> dict:
    return {
        "name": name,
        "task": {"dataset": "digits", "model": "mlp", "epochs": 2},
        "space": {"lr": 0.01, "batch_size": 64, "depth": 1, "width": {"choice": [16, 256]}},
        "compress": {"quantize": {"bits": {"choice": [32, 4]}}},
        "search": {"trials": 4, "concurrency": 2, "sampler": "random", "seed": 0, **search},
    }


def write(tmp: Path, s: dict) -> Path:
    p = tmp / f"{s['name']}.yaml"
    p.write_text(yaml.safe_dump(s))
    return p


@pytest.mark.slow
def test_prediction_matches_the_real_artifact_size(ray_session, tmp_path):
    spec = parse_spec(spec_dict("predict", trials=2))
    out = tmp_path / "run"
    assert main(["sweep", str(write(tmp_path, spec_dict("predict", trials=2))), "--out", str(out), "--quiet"]) == 0
    data = load_data(spec.task, spec.search.seed)
    for _, row in load_results(out).iterrows():
        cfg = {k: row[k] for k in ("lr", "batch_size", "depth", "width", "epochs", "prune_method", "bits", "seed")}
        if cfg["bits"] < 32:
            cfg.update(per_channel=bool(row["per_channel"]), symmetric=bool(row["symmetric"]))
        p = predict(spec, data, cfg)
        assert p["params"] == row["params"]  # (non-zeros after quantization depend on the trained weights)
        assert p["size_bytes"] == pytest.approx(row["size_bytes"], rel=0.1)


@pytest.mark.slow
def test_infeasible_configurations_are_never_trained(ray_session, tmp_path):
    # width 256 fp32 (~80 kB) breaks the 20 kB limit; width 16 and width 256 at 4 bits do not
    s = spec_dict("feasible", trials=3)
    s["constraints"] = {"size_bytes": {"max": 20000}}
    out = tmp_path / "run"
    assert main(["sweep", str(write(tmp_path, s)), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    trained = df[df["status"] != "infeasible"]
    skipped = df[df["status"] == "infeasible"]
    assert len(trained) == 3
    assert len(skipped) >= 1, "random sampling over 4 combinations should hit width 256 at 32 bits"
    assert ((skipped["width"] == 256) & (skipped["bits"] == 32)).all()
    assert skipped["artifact"].isna().all() and skipped["accuracy"].isna().all()
    assert not ((trained["width"] == 256) & (trained["bits"] == 32)).any()
    assert (trained["size_bytes"] <= 20000).all()
    study = optuna.load_study(study_name="feasible", storage=f"sqlite:///{out / 'study.db'}")
    by_number = {t.number: t for t in study.trials}
    for n in skipped["trial_number"]:
        t = by_number[n]  # the sampler is told: never trained (pruned), infeasible as predicted
        assert t.state == optuna.trial.TrialState.PRUNED and t.constraints["size_bytes"] > 0
        assert t.user_attrs["trained"] is False


def test_surely_infeasible_has_a_tolerance():
    spec = parse_spec({**spec_dict("tol"), "constraints": {"size_bytes": {"max": 1000}}})
    assert not surely_infeasible(spec, {"size_bytes": 1050.0})
    assert surely_infeasible(spec, {"size_bytes": 1200.0})


def test_pareto_halving_stops_a_dominated_trial_and_keeps_a_small_one():
    rule = ParetoHalving("accuracy", grace=1, eta=2, min_peers=3)
    assert [e for e in range(1, 10) if rule.milestone(e)] == [1, 2, 4, 8]
    for i, (size, acc) in enumerate([(1000, 0.9), (1000, 0.85), (2000, 0.95)]):
        assert not rule.decide(f"t{i}", 1, size, acc)  # too few peers yet
    # a large, inaccurate trial: three smaller-or-equal peers beat it -> stop
    assert rule.decide("big-bad", 1, 5000, 0.5)
    # a tiny trial, less accurate than all the larger ones: no peer is as small -> keep
    assert not rule.decide("tiny", 1, 100, 0.3)
    # a large trial better than its peers is kept
    assert not rule.decide("big-good", 1, 5000, 0.99)
    # not at a milestone: never stopped
    assert not rule.decide("big-bad-2", 3, 5000, 0.1)


@pytest.mark.slow
def test_early_stopping_in_a_sweep_marks_rows_and_prunes_in_the_study(ray_session, tmp_path):
    s = spec_dict("early", trials=8, early_stop={"grace_epochs": 1, "eta": 2, "min_peers": 1})
    s["task"]["epochs"] = 4
    s["space"]["lr"] = {"choice": [0.02, 1.0e-5]}  # lr 1e-5 learns nothing in 1 epoch
    s["search"]["concurrency"] = 1
    out = tmp_path / "run"
    assert main(["sweep", str(write(tmp_path, s)), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert len(df) == 8
    stopped = df[df["status"] == "stopped"]
    assert len(stopped) >= 1 and (df["status"] == "ok").sum() >= 1
    assert all("stopped early at epoch" in e for e in stopped["error"])
    study = optuna.load_study(study_name="early", storage=f"sqlite:///{out / 'study.db'}")
    states = {t.number: t.state for t in study.trials}
    assert all(states[n] == optuna.trial.TrialState.PRUNED for n in stopped["trial_number"])


@pytest.mark.slow
def test_warm_start_enqueues_the_earlier_front_and_observes_its_trials(ray_session, tmp_path):
    a = tmp_path / "a"
    s = spec_dict("warm-a", trials=3)
    s["space"]["lr"] = {"log_uniform": [1e-3, 3e-2]}
    assert main(["sweep", str(write(tmp_path, s)), "--out", str(a), "--quiet"]) == 0
    from slimtune.search import pareto_front

    earlier = load_results(a)
    front = pareto_front(earlier)
    b = tmp_path / "b"
    s2 = {**s, "name": "warm-b", "search": {**s["search"], "trials": len(front)}}
    assert main(["sweep", str(write(tmp_path, s2)), "--out", str(b), "--quiet", "--warm-start", str(a)]) == 0
    study = optuna.load_study(study_name="warm-b", storage=f"sqlite:///{b / 'study.db'}")
    observed = [t for t in study.trials if "observed_trial" in t.user_attrs]
    assert len(observed) == (earlier["status"] == "ok").sum()
    assert {t.user_attrs["observed_trial"] for t in observed} == set(earlier.loc[earlier["status"] == "ok", "trial_id"])
    later = load_results(b)
    assert len(later) == len(front)
    # the new sweep first ran exactly the earlier front's configurations
    key = ["lr", "width", "bits"]
    assert sorted(map(tuple, later[key].astype(str).values)) == sorted(map(tuple, front[key].astype(str).values))
    import json

    meta = json.loads((b / "sweep.json").read_text())
    assert meta["warm_start"]["enqueued"] == len(front) and meta["warm_start"]["observed"] == len(observed)


def test_warm_start_from_a_missing_sweep_is_bad_input(tmp_path, capsys):
    s = spec_dict("warm-bad")
    assert main(["sweep", str(write(tmp_path, s)), "--out", str(tmp_path / "x"), "--warm-start",
                 str(tmp_path / "nothing")]) == 2
    assert "slimtune: error: path:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ladder_turns_one_training_into_many_observations(ray_session, tmp_path):
    s = spec_dict("ladder", trials=2, ladder=3)
    s["compress"] = {"prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.3, 0.9]},
                               "finetune_epochs": 1},
                     "quantize": {"bits": {"choice": [32, 8, 4, 2]}}}
    out = tmp_path / "run"
    assert main(["sweep", str(write(tmp_path, s)), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    parents = df[df["parent"].isna()]
    rungs = df[df["parent"].notna()]
    assert len(parents) == 2 and len(rungs) == 6
    assert (df["status"] == "ok").all()
    study = optuna.load_study(study_name="ladder", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8  # each rung is an observation the sampler sees
    by_number = {t.number: t for t in study.trials}
    for _, r in rungs.iterrows():
        parent = parents.set_index("trial_number").loc[int(r["parent"])]
        # same training, another compression: training parameters equal the parent's
        assert r["width"] == parent["width"] and r["lr"] == parent["lr"] and r["depth"] == parent["depth"]
        assert r["trial_id"].startswith(parent["trial_id"] + "-r")
        assert (out / r["artifact"]).stat().st_size == r["size_bytes"]
        t = by_number[int(r["trial_number"])]
        assert t.values == pytest.approx([r["accuracy"], r["size_bytes"]])
        assert t.params["bits"] == r["bits"]
    # a rung differs from its parent and from its siblings in compression
    key = ["prune_method", "sparsity", "bits"]
    for p, group in rungs.groupby("parent"):
        own = parents.set_index("trial_number").loc[int(p), key].astype(str).tolist()
        settings = [tuple(x) for x in group[key].astype(str).values]
        assert len(set(settings)) == len(settings) and tuple(own) not in settings
