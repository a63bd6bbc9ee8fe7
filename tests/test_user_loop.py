"""A user's own training loop (``task.train``): slimtune keeps the order (train, prune, fine-tune,
QAT, quantize, measure) and calls the loop for every training phase with a context; a loop that
never calls ``ctx.after_step`` while pruned weights must stay zero fails that trial in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimtune.search import load_results, run_sweep
from slimtune.search.task.data import Data
from slimtune.search.task.train import Fit, UserLoopError, train
from slimtune.spaces import SpecError, parse_spec
from tests.test_sweep import digits_spec
from tests.user_hooks import forgetful_train, residual_net, smooth_train


def _data(n: int = 64) -> Data:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return Data(x, y, x[:16], y[:16], x[:16], y[:16], "classification", 10, {})


def test_the_loop_runs_each_phase_with_its_context_and_reports_reach_slimtune(tmp_path):
    model = residual_net({"input_shape": [64], "width": 8, "output_dim": 10, "depth": 1})
    seen = []
    fit = Fit(lr=0.01, batch_size=16, epochs=3, seed=0, loop=smooth_train, phase="finetune",
              params={"lr": 0.01, "marker_dir": str(tmp_path), "width": 8, "batch_size": 16})
    steps = []
    train(model, _data(), fit, after_step=lambda m: steps.append(1), on_epoch=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == [1, 2, 3] and all({"loss", "accuracy"} <= set(m) for _, m in seen)
    assert len(steps) == 3 * 4  # every optimizer step went through ctx.after_step
    assert (tmp_path / "phases.txt").read_text() == "finetune 3 cpu False\n"


def test_a_loop_that_never_calls_after_step_is_one_clear_error():
    model = residual_net({"input_shape": [64], "width": 8, "output_dim": 10, "depth": 1})
    fit = Fit(lr=0.01, batch_size=16, epochs=1, seed=0, loop=forgetful_train, phase="finetune", params={"lr": 0.01})
    with pytest.raises(UserLoopError, match=r"^task.train: the training loop must call ctx.after_step\(model\)"):
        train(model, _data(), fit, after_step=lambda m: None)
    train(model, _data(), fit)  # nothing to keep (no pruning): fine


def test_task_train_must_be_module_function():
    with pytest.raises(SpecError, match=r"^task.train: must be module:function"):
        parse_spec(digits_spec(task={"dataset": "digits", "model": "mlp", "train": "not a hook"}))


def _loop_spec(tmp_path, loop: str) -> dict:
    spec = digits_spec(name="t-loop", task={"dataset": "digits", "model": "tests.user_hooks:residual_net",
                                            "epochs": 4, "train": loop},
                       space={"lr": {"log_uniform": [0.03, 0.1]}, "batch_size": 64, "width": 16, "depth": 1,
                              "marker_dir": str(tmp_path)})
    spec["compress"] = {"prune": {"method": "magnitude", "sparsity": 0.5, "finetune_epochs": 1},
                        "quantize": {"bits": 4, "mode": "qat", "qat_epochs": 1}}
    spec["search"] = {**spec["search"], "trials": 2}
    return spec


def test_a_sweep_with_the_users_loop_trains_prunes_fine_tunes_and_runs_qat_through_it(ray_session, tmp_path):
    run_sweep(parse_spec(_loop_spec(tmp_path, "tests.user_hooks:smooth_train")), tmp_path / "run", quiet=True)
    ok = load_results(tmp_path / "run").query("status == 'ok'")
    assert len(ok) == 2 and (ok["accuracy"] > 0.3).all()  # 10 classes (chance 0.1): the loop really trained
    phases = [line.split()[0] for line in (tmp_path / "phases.txt").read_text().splitlines()]
    assert sorted(phases) == sorted(["train", "finetune", "qat"] * 2)


def test_a_sweep_whose_loop_forgets_after_step_fails_those_trials_in_one_line(ray_session, tmp_path):
    run_sweep(parse_spec(_loop_spec(tmp_path, "tests.user_hooks:forgetful_train")), tmp_path / "run", quiet=True)
    df = load_results(tmp_path / "run")
    assert (df["status"] == "failed").all()
    assert df["error"].str.startswith("UserLoopError: task.train: the training loop must call").all()


def test_a_loop_that_does_not_import_is_a_bad_spec(ray_session, tmp_path):
    with pytest.raises(SpecError, match=r"^task.train: must be an importable module:function"):
        run_sweep(parse_spec(_loop_spec(tmp_path, "tests.user_hooks:no_such_loop")), tmp_path / "run")
    assert torch.get_num_threads() >= 1
