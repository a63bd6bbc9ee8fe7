"""Knowledge distillation (``compress.distill``): the spec keys, the loss, the driver's choice of
teacher, and sweeps whose fine-tuning learns from the best dense model stored so far."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from slimtune import compress
from slimtune.cli import main
from slimtune.search import load_results
from slimtune.search.driver.place import ArtifactSink
from slimtune.search.searcher.teacher import best_teacher, distils
from slimtune.search.task.data import Data
from slimtune.search.task.train import Distill, Fit, distill_of, train
from slimtune.search.trial import TrialSetup, read_artifact, store_artifact
from slimtune.spaces import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def spec(name: str, distill: dict | None, trials: int = 6, **search) -> dict:
    s = {
        "name": name,
        "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
        "objectives": {"accuracy": "max", "size_bytes": "min"},
        "space": {"lr": {"log_uniform": [1e-3, 3e-2]}, "batch_size": 64, "depth": 1, "width": {"choice": [8, 16, 32]}},
        "compress": {"prune": {"method": "magnitude", "sparsity": 0.5, "finetune_epochs": 1},
                     "quantize": {"bits": {"choice": [8, 4]}, "mode": "qat", "qat_epochs": 1}},
        "search": {"trials": trials, "concurrency": 2, "sampler": "random", "seed": 3, **search},
    }
    if distill is not None:
        s["compress"]["distill"] = distill
    return s


@pytest.mark.parametrize("raw, field, shown", [
    ({"weight": 1}, "compress.distill.weight", "1"),
    ({"weight": -0.5}, "compress.distill.weight", "-0.5"),
    ({"weight": {"uniform": [0.2, 1.5]}}, "compress.distill.weight", "1.5"),
    ({"weight": "half"}, "compress.distill.weight", "'half'"),
    ({"weight": 0.5, "temperature": 0}, "compress.distill.temperature", "0"),
    ({"weight": 0.5, "temperature": -1}, "compress.distill.temperature", "-1"),
    ({"weight": 0, "temperature": 3}, "compress.distill.temperature", "weight > 0"),
    ({"temperature": 3}, "compress.distill.temperature", "weight is set"),
    ({"wieght": 0.5}, "compress.distill.wieght", "weight"),
])
def test_bad_distill_keys_are_one_line_errors(raw, field, shown):
    with pytest.raises(SpecError) as e:
        parse_spec(spec("bad", raw))
    assert e.value.field == field and shown in str(e.value) and "\n" not in str(e.value)


def test_distill_keys_are_drawn_only_where_written():
    on = parse_spec(spec("on", {"weight": {"choice": [0, 0.5]}, "temperature": 4}))
    assert distils(on) and "distill.weight" in on.searched
    drawn = [on.sample(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=s)).ask()) for s in range(8)]
    assert {c["distill_weight"] for c in drawn} == {0, 0.5}
    for c in drawn:  # the temperature applies only where the weight is > 0
        assert ("distill_temperature" in c) == (c["distill_weight"] > 0)
        assert c.get("distill_temperature", 4) == 4
    off = parse_spec(spec("off", None))
    assert not distils(off) and not distils(parse_spec(spec("zero", {"weight": 0})))
    c = off.sample(optuna.create_study().ask())
    assert "distill_weight" not in c and "distill_temperature" not in c


def _data(n: int = 256, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0).astype(np.int64)
    return Data(x, y, x[:64], y[:64], x[:64], y[:64], "classification", 4)


def _kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor, t: float) -> float:
    with torch.no_grad():
        return float(nn.functional.kl_div(torch.log_softmax(student(x) / t, -1), torch.log_softmax(teacher(x) / t, -1),
                                          reduction="batchmean", log_target=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_weight_1_the_student_moves_towards_the_teacher(seed):
    """The mechanism, not an accuracy claim: with weight 1 (labels ignored) the student's
    softened outputs approach a fixed random teacher's, which disagrees with the labels; the
    teacher itself is left unchanged and in eval mode."""
    data = _data(seed=seed)
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    before_teacher = [p.detach().clone() for p in teacher.parameters()]
    x = torch.from_numpy(data.x_train)
    kl0 = _kl(student, teacher, x, 2.0)
    train(student, data, Fit(lr=0.01, batch_size=32, epochs=5, seed=seed, distill=Distill(teacher, 1.0, 2.0)))
    assert _kl(student, teacher, x, 2.0) < 0.5 * kl0
    assert all(torch.equal(a, b) for a, b in zip(before_teacher, teacher.parameters()))
    assert not teacher.training
    labels = Fit(lr=0.01, batch_size=32, epochs=5, seed=seed)  # the same run from the labels alone: no nearer
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    train(plain, data, labels)
    assert _kl(student, teacher, x, 2.0) < _kl(plain, teacher, x, 2.0)


def test_weight_0_trains_exactly_as_without_distillation():
    data = _data()
    models = []
    for distill in (None, Distill(nn.Linear(8, 4), 0.0)):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        train(m, data, Fit(lr=0.01, batch_size=32, epochs=2, seed=0, distill=distill))
        models.append(m)
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))


def test_regression_follows_the_teachers_outputs():
    d = _data()
    data = Data(d.x_train, d.x_train[:, 0] * 3, d.x_val, d.x_val[:, 0] * 3, d.x_test, d.x_test[:, 0] * 3,
                "regression", 1)
    torch.manual_seed(0)
    teacher, student = nn.Linear(8, 1), nn.Linear(8, 1)
    train(student, data, Fit(lr=0.05, batch_size=32, epochs=20, seed=0, distill=Distill(teacher, 1.0)))
    assert torch.allclose(student.weight, teacher.weight, atol=0.05)


def test_distill_of_a_config():
    t = nn.Linear(2, 2)
    assert distill_of({"distill_weight": 0.5}, None) is None  # no teacher yet
    assert distill_of({"distill_weight": 0.0}, t) is None and distill_of({}, t) is None
    assert distill_of({"distill_weight": float("nan")}, t) is None
    d = distill_of({"distill_weight": 0.5}, t)
    assert (d.weight, d.temperature, d.teacher) == (0.5, 2.0, t)  # the declared default temperature
    assert distill_of({"distill_weight": 0.9, "distill_temperature": 4.0}, t).temperature == 4.0
    with pytest.raises(ValueError, match="temperature"):
        Distill(t, 0.5, 0.0)


def test_the_teacher_is_the_best_dense_model_of_this_sweep_told_so_far():
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert best_teacher(study, "accuracy") == (None, None)

    def told(dense: float | None, **attrs) -> None:
        t = study.ask()
        row = {"dense_accuracy": dense, "dense_artifact": None if dense is None else f"teachers/{t.number}.slim"}
        for k, v in {"ray_trial_id": f"r{t.number}", "row": row, **attrs}.items():
            if v is not None:
                t.set_user_attr(k, v)
        study.tell(t, [0.5, 100.0])

    told(0.7)
    told(0.9)
    told(0.9)  # a tie: the earlier trial stays the teacher
    told(None)  # stored no dense model
    told(0.99, ray_trial_id=None, row={"dense_accuracy": 0.99})  # a rung or a warm-start observation
    t = study.ask()
    assert best_teacher(study, "accuracy") == ("teachers/1.slim", 1)
    t.set_user_attr("ray_trial_id", "running")  # not told yet: not a teacher
    t.set_user_attr("row", {"dense_accuracy": 1.0, "dense_artifact": "teachers/5.slim"})
    assert best_teacher(study, "accuracy") == ("teachers/1.slim", 1)


def test_dense_weights_go_and_come_back_through_the_sink_or_the_folder(tmp_path):
    sink = ArtifactSink(str(tmp_path / "driver"))  # the actor's class, called in this process
    assert sink.put("teachers/3.slim", b"dense") == 5 and sink.get("teachers/3.slim") == b"dense"
    setup = TrialSetup(out_dir=str(tmp_path / "run"), model="mlp", kind="classification")
    assert store_artifact(setup, "teachers/4.slim", b"weights") == 7
    assert read_artifact(setup, "teachers/4.slim") == b"weights"


def test_a_trial_reads_its_teacher_back_and_distils_from_it(tmp_path):
    """Without Ray: trial 0 offers its dense model; trial 1 (same training) reads it back from the
    folder and distils its fine-tuning and QAT from it: a different compressed model than with
    weight 0, which is exactly the model trained from the labels alone."""
    from slimtune.search.task.data import load_data
    from slimtune.search.trial import run_trial

    data = load_data(parse_spec(spec("unit", None)).task)
    setup = TrialSetup(out_dir=str(tmp_path), model="mlp", kind=data.kind)
    base = {"lr": 0.01, "batch_size": 64, "depth": 1, "width": 16, "epochs": 1, "seed": 5,
            "prune_method": "magnitude", "sparsity": 0.5, "finetune_epochs": 1, "bits": 4, "quant_mode": "qat",
            "qat_epochs": 1}

    def trial(n: int, **cfg) -> dict:
        return run_trial({**base, "trial_number": n, **cfg}, data, setup, report=lambda m: None)

    first = trial(0, teacher=None, teacher_trial=None, distill_weight=0.5)
    assert first["dense_artifact"] == "teachers/0.slim" and 0 < first["dense_accuracy"] <= 1
    assert isinstance(compress.load(tmp_path / "teachers/0.slim"), nn.Module)
    plain = trial(1)  # not a distilling sweep: no dense model stored
    assert "dense_artifact" not in plain and not (tmp_path / "teachers/1.slim").exists()
    taught = trial(2, teacher="teachers/0.slim", teacher_trial=0, distill_weight=0.9)
    off = trial(3, teacher="teachers/0.slim", teacher_trial=0, distill_weight=0.0)
    blob = {n: (tmp_path / r["artifact"]).read_bytes() for n, r in {1: plain, 2: taught, 3: off}.items()}
    assert blob[2] != blob[1] and blob[3] == blob[1]


def _check_teachers(out: Path, name: str) -> pd.DataFrame:
    """Every row names a teacher that was the best dense model among the trials told before it
    was handed out; the teachers' files load; returns the rows."""
    df = load_results(out)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    trained = [t for t in study.trials if t.user_attrs.get("ray_trial_id")]
    for t in trained:
        cfg = t.user_attrs["config"]
        before = [u for u in trained if u.state == optuna.trial.TrialState.COMPLETE
                  and u.datetime_complete is not None and u.datetime_complete <= t.datetime_start]
        best = max((u.user_attrs["row"]["dense_accuracy"] for u in before), default=None)
        if best is None:
            assert cfg["teacher"] is None and cfg["teacher_trial"] is None
            continue
        teacher = study.trials[cfg["teacher_trial"]]
        assert teacher.user_attrs["row"]["dense_accuracy"] == best and teacher in before
        assert cfg["teacher"] == f"teachers/{teacher.number}.slim"
    ok = df[(df["status"] == "ok") & df["parent"].isna()]
    assert ok["dense_artifact"].notna().all() and ok["dense_accuracy"].between(0, 1).all()
    for rel in ok["dense_artifact"]:
        assert isinstance(compress.load(out / rel), nn.Module)
    assert set(df["teacher"].dropna()) <= set(ok["dense_artifact"])
    return df


@pytest.mark.slow  # a 6-trial digits sweep with ladder rungs: ~40 s on a shared machine
def test_a_distilling_sweep_names_the_best_dense_model_told_so_far(ray_session, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec("distil", {"weight": {"choice": [0.5, 0.9]}, "temperature": 3},
                                        ladder=1, reproducible=True)))
    out = tmp_path / "run"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    df = _check_teachers(out, "distil")
    assert (df["status"] == "ok").all(), df["error"].tolist()
    trained, rungs = df[df["parent"].isna()], df[df["parent"].notna()]
    # reproducible: the first batch (4) has no teacher yet; the rest distil from one of them
    assert trained["teacher"].isna().sum() == 4 and trained["teacher_trial"].dropna().between(0, 3).all()
    assert trained["teacher_trial"].notna().sum() == 2 and len(rungs) >= 1
    for _, rung in rungs.iterrows():  # a rung shares its parent's teacher and stores no dense model
        parent = trained.set_index("trial_number").loc[rung["parent"]]
        assert rung["teacher"] == parent["teacher"] or (pd.isna(rung["teacher"]) and pd.isna(parent["teacher"]))
        assert pd.isna(rung["dense_artifact"])
    assert set(df["distill_weight"]) <= {0.5, 0.9} and set(df["distill_temperature"]) == {3.0}
    assert sorted(p.name for p in (out / "teachers").iterdir()) == sorted(f"{n}.slim" for n in trained["trial_number"])


@pytest.mark.slow  # a sweep SIGKILLed after 2 trials and resumed: ~60 s
def test_a_resumed_sweep_keeps_its_teachers_and_finds_their_files(ray_session, tmp_path):
    from tests.test_resume import _wait_rows

    out = tmp_path / "run"
    path = tmp_path / "spec.yaml"
    # 12 short trials one at a time: the driver is killed within a poll (0.5 s) of the second ok
    # row, so several trials are always left for the resumed driver (6 left only 2 on a fast machine)
    path.write_text(yaml.safe_dump(spec("distil-resume", {"weight": 0.5}, trials=12, concurrency=1)))
    proc = subprocess.Popen([sys.executable, "-m", "slimtune", "sweep", str(path), "--out", str(out), "--quiet"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = _wait_rows(out, 2, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert main(["resume", str(out), "--quiet"]) == 0
    df = _check_teachers(out, "distil-resume").set_index("trial_id")
    for _, row in before[before["status"] == "ok"].iterrows():  # chosen before the kill: kept
        kept, was = df.loc[row["trial_id"], "teacher_trial"], row["teacher_trial"]
        assert (pd.isna(kept) and pd.isna(was)) or kept == was
    later = df[~df.index.isin(before["trial_id"]) & (df["status"] == "ok")]
    assert len(later) >= 3 and later["teacher"].notna().all()  # the stored teachers were found after resume
    assert all((out / t).is_file() for t in later["teacher"])


@pytest.mark.slow  # two 8-trial sweeps: ~80 s on a shared machine
def test_reproducible_with_distillation_same_rows_teachers_and_artifacts_at_concurrency_1_and_2(ray_session, tmp_path):
    from tests.test_reproducible import VARYING, digests, digits_like, sweep

    s = digits_like("repro-distil")
    s["compress"]["distill"] = {"weight": {"choice": [0, 0.5, 0.9]}}
    one = {**s, "search": {**s["search"], "concurrency": 1}}
    a, b = sweep(tmp_path, one, "a"), sweep(tmp_path, s, "b")
    da, db = load_results(a), load_results(b)
    assert da["teacher_trial"].notna().sum() >= 2 and (da["distill_weight"] > 0).any()  # distillation did act
    pd.testing.assert_frame_equal(da.drop(columns=VARYING), db.drop(columns=VARYING))
    assert digests(a, da) == digests(b, db)
    teachers = {p.name: p.read_bytes() for p in (a / "teachers").iterdir()}
    assert teachers == {p.name: p.read_bytes() for p in (b / "teachers").iterdir()}
