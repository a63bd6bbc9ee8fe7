"""Training that reaches what the architecture can: learning-rate schedules (space.lr_schedule)
and multi-fidelity that promotes (search.promote: successive halving over epoch budgets with
the two-objective comparison, promoted configurations retrained as new trials and rows)."""

from __future__ import annotations

import itertools
import math

import optuna
import pytest
import yaml

from slimtune.search.searcher.promote import Promotion
from slimtune.search.task.train import Fit, Schedule
from slimtune.spaces import SpecError, parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------------------------------
# Schedules


def test_constant_is_the_default_and_is_flat():
    assert Schedule() == Schedule("constant", 0.0, 0.0)
    assert all(Schedule().factor(t, 50) == 1.0 for t in range(50))
    space = dict(parse_spec({"name": "t", "task": {"dataset": "digits"}}).space)
    assert "lr_schedule" not in space  # specs without it keep today's columns and training


def test_wsd_warms_up_holds_then_decays_to_about_zero():
    s, total = Schedule("wsd", warmup=0.1, decay=0.2), 100
    f = [s.factor(t, total) for t in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # 10 warm-up steps, linear
    assert all(a < b for a, b in itertools.pairwise(f[:10]))
    assert f[10:80] == [1.0] * 70  # stable
    assert all(a > b for a, b in itertools.pairwise(f[80:]))  # 20 decay steps, linear, down to 1/20
    assert f[80] == pytest.approx(1.0) and f[-1] == pytest.approx(1 / 20)
    assert s.finetune() == Schedule("wsd", 0.0, 1.0)
    ft = [s.finetune().factor(t, 10) for t in range(10)]
    assert ft[0] == 1.0 and ft[-1] == pytest.approx(0.1) and ft == sorted(ft, reverse=True)


def test_cosine_warms_up_then_follows_a_half_cosine():
    s, total = Schedule("cosine", warmup=0.1), 100
    assert s.factor(4, total) == pytest.approx(0.5)
    assert s.factor(10, total) == pytest.approx(1.0)
    assert s.factor(55, total) == pytest.approx(0.5)
    assert s.factor(99, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert Schedule().finetune() == Schedule()  # constant training, constant fine-tuning (as before)


def test_schedule_keys_are_space_parameters_with_defaults_and_can_be_searched():
    spec = parse_spec({"name": "t", "task": {"dataset": "digits"},
                       "space": {"lr_schedule": {"choice": ["constant", "wsd", "cosine"]},
                                 "decay": {"uniform": [0.1, 0.5]}}})
    space = dict(spec.space)
    assert space["warmup"].value == 0.05 and "decay" in spec.searched and "lr_schedule" in spec.searched
    cfg = spec.sample(optuna.trial.FixedTrial({"lr_schedule": "wsd", "decay": 0.3}))
    assert (cfg["lr_schedule"], cfg["warmup"], cfg["decay"]) == ("wsd", 0.05, 0.3)


def test_the_trial_trains_with_the_configured_schedule():
    from slimtune.search.trial import schedule_of

    assert schedule_of({"lr": 1e-3}) == Schedule()
    assert schedule_of({"lr_schedule": "wsd", "warmup": 0.0, "decay": 0.5}) == Schedule("wsd", 0.0, 0.5)


def test_train_applies_the_schedule_to_each_step():
    """The rate each step moves the weights by: ``lr * factor(step, total)`` over all epochs.

    The probe's outputs do not depend on its one weight, yet its gradient is 0.5 at every step
    (all labels 1 of 2 classes, straight through): Adam then moves it by exactly the step's rate."""
    import numpy as np
    import torch

    from slimtune.search.task.data import Data
    from slimtune.search.task.train import train

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.zeros(len(x), 2) + (self.w - self.w.detach()) * torch.tensor([1.0, 0.0])

    def rates(fit: Fit) -> list[float]:
        weights = [0.0]
        train(Probe(), data, fit, after_step=lambda m: weights.append(m.w.detach().item()))
        return [before - after for before, after in itertools.pairwise(weights)]

    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.ones(40, dtype=np.int64)
    data = Data(x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y, kind="classification", n_outputs=2)
    s = Schedule("wsd", warmup=0.1, decay=0.3)
    got = rates(Fit(lr=0.1, batch_size=16, epochs=10, seed=0, schedule=s))  # 3 steps an epoch
    assert got == pytest.approx([0.1 * s.factor(t, 30) for t in range(30)], rel=1e-5)
    assert len(set(got)) > 2, "the schedule must change the rate"
    assert rates(Fit(lr=0.1, batch_size=16, epochs=2, seed=0)) == pytest.approx([0.1] * 6, rel=1e-5)


@pytest.mark.parametrize("space, message", [
    ({"lr_schedule": "linear"}, "space.lr_schedule: must be one of constant, wsd, cosine, but got 'linear'"),
    ({"lr_schedule": {"choice": ["wsd", "step"]}}, "space.lr_schedule: must be one of constant, wsd, cosine"),
    ({"warmup": 0.1}, "space.warmup: is only used with an lr_schedule"),
    ({"lr_schedule": "wsd", "warmup": 1.0}, "space.warmup: `0 <= warmup < 1` must hold"),
    ({"lr_schedule": "wsd", "decay": {"uniform": [0.1, 1.5]}}, "space.decay: `0 <= decay <= 1` must hold"),
    ({"lr_schedule": "wsd", "warmup": 0.5, "decay": 0.6}, "space.decay: `warmup + decay <= 1` must hold"),
])
def test_bad_schedule_keys_are_one_line_errors(space, message):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", "task": {"dataset": "digits"}, "space": space})
    assert str(info.value).startswith(message) and "\n" not in str(info.value), info.value


@pytest.mark.parametrize("search, message", [
    ({"promote": {"rungs": [3]}}, "search.promote.rungs: must be a list of at least 2 increasing"),
    ({"promote": {"rungs": [3, 3]}}, "search.promote.rungs: must be a list of at least 2 increasing"),
    ({"promote": {"rungs": [0, 3]}}, "search.promote.rungs: must be a list of at least 2 increasing"),
    ({"promote": {"rungs": [1, 3], "keep": 1.0}}, "search.promote.keep: `0 < keep < 1` must hold"),
    ({"promote": {"rungs": [1, 3], "eta": 3}}, "search.promote.eta: unknown key"),
])
def test_bad_promote_keys_are_one_line_errors(search, message):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", "task": {"dataset": "digits"}, "search": search})
    assert str(info.value).startswith(message) and "\n" not in str(info.value), info.value


def test_promote_sets_the_epochs():
    spec = parse_spec({"name": "t", "task": {"dataset": "digits"}, "search": {"promote": {"rungs": [2, 6, 18]}}})
    assert spec.task.epochs.value == 2 and spec.search.promote.keep == pytest.approx(1 / 3)
    with pytest.raises(SpecError, match="^task.epochs: is set by search.promote.rungs"):
        parse_spec({"name": "t", "task": {"dataset": "digits", "epochs": 5}, "search": {"promote": {"rungs": [1, 3]}}})


# ---------------------------------------------------------------------------------------
# The promotion rule and the searcher, without Ray running


def row(acc: float, size: float, status: str = "ok", feasible: bool = True) -> dict:
    return {"status": status, "accuracy": acc, "size_bytes": size, "feasible": feasible}


def test_the_rule_promotes_the_best_for_their_size_once_each():
    rule = Promotion((1, 3, 9), 1 / 3, {"accuracy": "max", "size_bytes": "min"})
    rule.record(0, 1, row(0.80, 1000))
    rule.record(1, 1, row(0.70, 2000))  # dominated by 0
    assert rule.due() == []  # quota floor(2/3) = 0
    rule.record(2, 1, row(0.60, 500))  # small: on the front though less accurate
    assert rule.due() == [(0, 3)]  # quota 1: the front's most accurate first
    assert rule.due() == []  # never twice
    rule.record(3, 1, row(0.99, 100, feasible=False))  # infeasible: never promoted
    rule.record(4, 1, row(0.10, 9000, status="stopped"))  # counted, not promotable
    rule.record(5, 1, row(0.10, 9000, status="failed"))  # not counted
    assert rule.due() == []  # 5 finished: quota floor(5/3) = 1, already made
    rule.record(7, 1, row(0.50, 3000))
    assert rule.due() == [(2, 3)]  # 6 finished: quota 2; the front's next member
    rule.record(8, 1, row(0.95, 900))  # dominates 0, which was promoted when it ranked first
    assert rule.due() == []  # 7 finished: quota 2, both made
    rule.record(9, 1, row(0.50, 3000))
    rule.record(10, 1, row(0.50, 3000))
    assert rule.due() == [(8, 3)]  # 9 finished: quota 3; the best of the top 3 not yet promoted
    rule.record(6, 3, row(0.9, 1000))
    assert rule.due() == []  # one at rung 3: quota 0
    assert rule.ranked(1)[:3] == [8, 2, 0]  # 8 dominates 0: a front of 8 and 2, then 0


def promo_spec(**search) -> dict:
    return {
        "name": "promo",
        "task": {"dataset": "digits", "kind": "classification", "model": "mlp"},
        "objectives": {"accuracy": "max", "size_bytes": "min"},
        "space": {"lr": {"log_uniform": [1e-3, 1e-1]}, "width": {"choice": [8, 16, 32]}, "depth": 1},
        "search": {"trials": 6, "concurrency": 1, "sampler": "random", "seed": 0,
                   "promote": {"rungs": [1, 3]}, **search},
    }


def result(cfg: dict) -> dict:
    """A fake final report: accuracy grows with lr, size with width."""
    return {"phase": "final", "accuracy": min(1.0, 10 * cfg["lr"]) * cfg["epochs"] / 3,
            "size_bytes": 100.0 * cfg["width"]}


def drive(searcher, stop_after: int | None = None) -> list[dict]:
    """Run ``searcher`` as Ray would at concurrency 1; stop (a kill) after ``stop_after`` suggestions."""
    cfgs = []
    while stop_after is None or len(cfgs) < stop_after:
        tid = f"t{len(cfgs)}-{id(searcher)}"
        cfg = searcher.suggest(tid)
        if cfg == searcher.FINISHED:
            break
        assert cfg is not None
        cfgs.append(cfg)
        if stop_after is None or len(cfgs) < stop_after:
            searcher.on_trial_complete(tid, result(cfg))
    return cfgs


def check_promotions(study: optuna.Study, spec) -> None:
    trials = study.get_trials(deepcopy=False)
    ended = [t for t in trials if t.state.is_finished() and t.user_attrs.get("row")]  # not the interrupted
    promoted = [t for t in ended if t.user_attrs.get("parent") is not None]
    firsts = [t for t in ended if t.user_attrs.get("budget") == 1]
    assert len(firsts) == 6 and len(promoted) == 2  # floor(6/3) promotions, on top of the 6 configurations
    assert len({t.user_attrs["parent"] for t in promoted}) == 2  # none twice
    rule = Promotion((1, 3), 1 / 3, {"accuracy": "max", "size_bytes": "min"})
    for t in firsts:
        rule.record(t.number, 1, t.user_attrs["row"])
    front = set(rule.ranked(1)[:2])
    for t in promoted:
        parent = trials[t.user_attrs["parent"]]
        assert t.user_attrs["parent"] in front  # on the lower rung's front
        assert t.params == parent.params and t.user_attrs["budget"] == 3
        cfg = t.user_attrs["config"]
        assert cfg["epochs"] == 3 and cfg["seed"] == parent.user_attrs["config"]["seed"]
        assert t.user_attrs["row"]["parent"] == parent.number and t.user_attrs["row"]["budget"] == 3
        assert t.values[0] == pytest.approx(3 * parent.values[0])  # retrained at 3 epochs (fake)


@pytest.mark.parametrize("reproducible", [False, True])
def test_the_searcher_promotes_as_new_trials(reproducible):
    from slimtune.search.searcher.study_searcher import SlimSearcher

    spec = parse_spec(promo_spec(reproducible=reproducible))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    cfgs = drive(SlimSearcher(spec, study, data=None, trials=6))
    assert len(cfgs) == 8 and sum(c.get("parent") is not None for c in cfgs) == 2
    check_promotions(study, spec)


def test_reproducible_mode_promotes_at_batch_boundaries_whatever_the_order_trials_end():
    """Reproducible mode: the same trials, parameters and promotions however a batch's trials
    end (here: in order, and in reverse), since promotion waits for the batch boundary."""
    from slimtune.search.searcher.study_searcher import SlimSearcher

    spec = parse_spec(promo_spec(reproducible=True, trials=9))

    def run(reverse: bool) -> list[tuple]:
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        searcher, out, k = SlimSearcher(spec, study, data=None, trials=9), [], 0
        while True:
            batch = []
            while (cfg := searcher.suggest(f"t{k}")) not in (None, searcher.FINISHED):
                batch.append((f"t{k}", cfg))
                k += 1
            if not batch:
                assert cfg == searcher.FINISHED
                break
            for tid, cfg in (reversed(batch) if reverse else batch):
                searcher.on_trial_complete(tid, result(cfg))
            out += [(c["trial_number"], c["lr"], c["width"], c["epochs"], c.get("parent")) for _, c in batch]
        return out

    forward = run(False)
    assert forward == run(True)
    assert sum(p is not None for *_, p in forward) == 3  # floor(9/3)
    assert [n for n, *_ in forward] == list(range(len(forward)))


def test_a_killed_searcher_resumes_without_losing_or_doubling_a_promotion():
    """The study is the promotion's record: kill after each suggestion in turn, resume as
    ``slimtune resume`` does (running trials failed, rerun with their attributes), finish."""
    from slimtune.search.searcher.promote import promotion_attrs, promotions_left
    from slimtune.search.searcher.study_searcher import SlimSearcher

    spec = parse_spec(promo_spec())
    for kill_at in range(1, 9):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
        drive(SlimSearcher(spec, study, data=None, trials=6), stop_after=kill_at)
        for t in study.trials:  # resume_sweep's treatment of the trials that were running
            if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("config") is not None:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number, **promotion_attrs(t.user_attrs)})
        done = sum(1 for t in study.trials if t.state.is_finished() and t.user_attrs.get("row")
                   and t.user_attrs.get("parent") is None)
        assert done < 6 or promotions_left(spec, study) or kill_at == 8
        drive(SlimSearcher(spec, study, data=None, trials=6 - done))
        ended = [t for t in study.trials if t.user_attrs.get("row")]
        assert len(ended) == 8, kill_at
        check_promotions(study, spec)


# ---------------------------------------------------------------------------------------
# A sweep


@pytest.mark.slow
def test_a_digits_sweep_promotes_the_front_to_the_longer_budget(ray_session, tmp_path):
    from slimtune.cli import main
    from slimtune.search import load_results

    s = promo_spec()
    s["space"]["lr_schedule"] = "wsd"
    s["search"]["concurrency"] = 2
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(s))
    out = tmp_path / "run"
    assert main(["sweep", str(tmp_path / "s.yaml"), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert (df["status"] == "ok").all() and len(df) == 8
    first, promoted = df[df["parent"].isna()], df[df["parent"].notna()]
    assert len(first) == 6 and (first["budget"] == 1).all() and (first["epochs"] == 1).all()
    assert len(promoted) == 2 and (promoted["budget"] == 3).all() and (promoted["epochs"] == 3).all()
    assert (df["lr_schedule"] == "wsd").all() and (df["decay"] == 0.2).all()
    by_number = first.set_index("trial_number")
    rule = Promotion((1, 3), 1 / 3, {"accuracy": "max", "size_bytes": "min"})
    for n, r in by_number.iterrows():
        rule.record(int(n), 1, r.to_dict())
    for _, p in promoted.iterrows():
        parent = by_number.loc[int(p["parent"])]
        assert int(p["parent"]) in rule.ranked(1)  # on a front of the first rung
        assert (p["lr"], p["width"], p["seed"]) == (parent["lr"], parent["width"], parent["seed"])


@pytest.mark.slow
def test_a_killed_promoting_sweep_resumes_with_each_promotion_once(ray_session, tmp_path):
    """SIGKILL the driver of a promoting sweep once some trials have ended; `slimtune resume`
    finishes it: 6 configurations, floor(6/3) promotions, none lost or made twice."""
    import os
    import signal
    import subprocess
    import sys

    from slimtune.cli import main
    from slimtune.search import load_results
    from tests.test_resume import ROOT, _wait_rows

    s = promo_spec()
    s["search"]["sampler"] = "tpe"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(s))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "slimtune", "sweep", str(tmp_path / "s.yaml"), "--out", str(out),
                             "--quiet"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_rows(out, 4, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert main(["resume", str(out), "--quiet"]) == 0
    df = load_results(out)
    promoted = df[df["parent"].notna()]
    assert (df["status"] == "ok").all() and len(df) == 8, df[["trial_number", "status", "parent", "budget"]]
    assert len(promoted) == 2 and promoted["parent"].is_unique and (promoted["budget"] == 3).all()
    assert (df[df["parent"].isna()]["budget"] == 1).all()


@pytest.mark.slow
def test_a_reproducible_promoting_sweep_gives_the_same_rows_at_concurrency_1_and_2(ray_session, tmp_path):
    import pandas as pd

    from slimtune.cli import main
    from slimtune.search import load_results
    from tests.test_reproducible import VARYING

    frames = []
    for concurrency in (1, 2):
        s = promo_spec(reproducible=True, concurrency=concurrency)
        s["search"]["sampler"] = "tpe"
        (tmp_path / f"{concurrency}.yaml").write_text(yaml.safe_dump(s))
        out = tmp_path / f"run{concurrency}"
        assert main(["sweep", str(tmp_path / f"{concurrency}.yaml"), "--out", str(out), "--quiet"]) == 0
        frames.append(load_results(out).drop(columns=VARYING))
    assert (frames[0]["parent"].notna()).sum() == 2
    pd.testing.assert_frame_equal(frames[0], frames[1])
