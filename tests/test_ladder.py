"""The ladder, aimed: rungs proposed by the searcher in the driver fill the front's size gaps."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from slimtune.cli import main
from slimtune.search import load_data, load_results
from slimtune.search.searcher.ladder import POOL, aim, front_sizes, propose
from slimtune.search.searcher.size_prediction import predict
from slimtune.search.trial import ladder_configs
from slimtune.spaces import parse_spec


def spec_dict(name: str = "ladder-aim", **search) -> dict:
    return {
        "name": name,
        "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
        "space": {"lr": 0.01, "batch_size": 64, "depth": 1, "width": 64},
        "compress": {"prune": {"method": "magnitude", "sparsity": {"uniform": [0.0, 0.9]}, "finetune_epochs": 0},
                     "quantize": {"bits": {"choice": [32, 8, 4, 2]}}},
        "search": {"trials": 3, "concurrency": 1, "sampler": "random", "seed": 0, "ladder": 2, **search},
    }


CONFIG = {"lr": 0.01, "batch_size": 64, "depth": 1, "width": 64, "epochs": 1, "prune_method": "magnitude",
          "sparsity": 0.1, "bits": 32, "seed": 123, "trial_number": 0}


def study_with_front(points: list[tuple[float, float]]) -> optuna.Study:
    """A study whose finished rows are ``(accuracy, size_bytes)`` points."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size in points:
        row = {"status": "ok", "feasible": True, "accuracy": acc, "size_bytes": size}
        study.add_trial(optuna.trial.create_trial(values=[acc, size], user_attrs={"row": row}))
    return study


def test_aim_fills_the_widest_gap_first():
    # front at 1 kB, 2 kB and 64 kB: the gap 2..64 kB is the widest (log scale)
    picked = aim([1000, 2000, 64000], None, [1500, 3000, 11000, 60000, 100000], 2)
    assert picked[0] == 2  # 11 kB: nearest the middle of 2..64 kB (about 11.3 kB)
    assert set(picked) <= {1, 2, 3}  # never above the front's largest size
    assert aim([], None, [1500.0], 1) == []  # no front: nothing to aim at
    # below the front the widest gap is open downwards: its smallest candidate extends the front
    assert aim([10000, 20000], None, [100, 500, 15000], 2) == [0, 1]


def test_proposed_rungs_fall_in_the_front_gap_and_differ_from_uniform():
    spec = parse_spec(spec_dict())
    data = load_data(spec.task, 0)
    pool = ladder_configs(spec, CONFIG, POOL * 2)
    sizes = sorted(predict(spec, data, c)["size_bytes"] for c in pool)
    lo, hi = sizes[1], sizes[-2]  # a front at the second smallest and second largest candidate size
    study = study_with_front([(0.5, lo), (0.95, hi)])
    assert front_sizes(spec, study) == [lo, hi]
    config = {**CONFIG, "predicted_size_bytes": int(hi)}
    rungs = propose(spec, data, study, config, 2)
    assert len(rungs) == 2
    for r in rungs:
        size = predict(spec, data, r)["size_bytes"]
        assert lo < size < hi, (lo, size, hi)
        assert r["predicted_size_bytes"] == int(size)
        assert all(r[k] == CONFIG[k] for k in ("lr", "batch_size", "depth", "width", "epochs"))  # same training
    uniform = ladder_configs(spec, CONFIG, 2)
    strip = [{k: v for k, v in r.items() if k not in ("seed", "predicted_size_bytes")} for r in rungs]
    assert strip != [{k: v for k, v in r.items() if k != "seed"} for r in uniform]
    # deterministic given the seed and the front; without a front, the uniform draw
    assert propose(spec, data, study, config, 2) == rungs
    assert propose(spec, data, study_with_front([]), config, 2) == uniform


@pytest.mark.slow
def test_sweep_rungs_are_the_proposed_configs(ray_session, tmp_path):
    s = spec_dict("ladder-sweep")
    path = Path(tmp_path) / "s.yaml"
    path.write_text(yaml.safe_dump(s))
    out = tmp_path / "run"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert "ladder_configs" not in df.columns
    parents, rungs = df[df["parent"].isna()], df[df["parent"].notna()]
    assert len(parents) == 3 and len(rungs) >= 4
    study = optuna.load_study(study_name="ladder-sweep", storage=f"sqlite:///{out / 'study.db'}")
    by_number = {t.number: t for t in study.trials}
    aimed = 0
    for _, r in rungs.iterrows():
        parent = parents.set_index("trial_number").loc[int(r["parent"])]
        proposed = by_number[int(parent.name)].user_attrs["config"]["ladder_configs"]
        k = int(r["trial_id"].rsplit("-r", 1)[1])
        assert r["bits"] == proposed[k]["bits"] and r["sparsity"] == pytest.approx(proposed[k]["sparsity"])
        assert int(r["seed"]) == proposed[k]["seed"]
        aimed += "predicted_size_bytes" in proposed[k]  # aimed (a front existed), not the uniform fallback
    assert aimed >= 2, "the trials after the first should have aimed rungs"
