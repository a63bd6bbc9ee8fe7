"""Python first: run_sweep takes a spec as a path, a dict or a Spec; a sweep started from Python
records the folder its hooks come from; errors raised in Python name Python arguments, and the
CLI names its flags for the same errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slimtune import SpecError, export_trial, load_model, load_results, run_sweep
from slimtune.cli import main
from tests.test_sweep import digits_spec

ROOT = Path(__file__).resolve().parents[1]


def _small(**over) -> dict:
    spec = digits_spec(**over)
    spec["search"] = {**spec["search"], "trials": 2}
    return spec


def test_run_sweep_takes_a_yaml_path_and_a_dict(ray_session, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_small(name="t-path")))
    df = run_sweep(str(path), tmp_path / "a", quiet=True)
    assert len(df) >= 2 and json.loads((tmp_path / "a" / "sweep.json").read_text())["base_dir"] == str(tmp_path)
    df = run_sweep(_small(name="t-dict"), tmp_path / "b", quiet=True)
    assert len(load_results(tmp_path / "b")) == len(df) >= 2
    with pytest.raises(SpecError, match=r"^spec: must be a slimtune.Spec, a path to a YAML spec or a dict"):
        run_sweep(42, tmp_path / "c")


def test_errors_in_python_name_arguments_and_the_cli_names_flags(tmp_path, capsys):
    run = ROOT / "tests" / "fixtures" / "sweep_v1"  # a stored sweep: nothing to train here
    with pytest.raises(SpecError) as err:
        load_model(run, trial=999)
    assert str(err.value).startswith("trial: must be a trial number") and "known trial numbers: 0" in str(err.value)
    with pytest.raises(SpecError) as err:
        load_results(tmp_path / "nothing-here")
    assert "Storage(" not in str(err.value) and str(tmp_path / "nothing-here") in str(err.value)
    assert main(["export", str(run), "--trial", "999", "--out", str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err.startswith("slimtune: error: --trial: must be a trial number")


def test_a_python_sweep_records_where_its_hook_model_comes_from(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the folder the hook lives in
    spec = _small(name="t-hookdir", task={"dataset": "digits", "model": "tests.user_hooks:residual_net", "epochs": 1},
                  space={"lr": 0.01, "batch_size": 64, "width": 8, "depth": 1})
    run_sweep(spec, tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run" / "sweep.json").read_text())["base_dir"] == str(ROOT)
    ok = load_results(tmp_path / "run").query("status == 'ok'")
    n = int(ok["trial_number"].iloc[0])
    assert export_trial(tmp_path / "run", n, "onnx", tmp_path / "m.onnx", trust_code=True).is_file()


def test_model_train_and_data_as_python_objects_from_the_calling_script(ray_session, tmp_path):
    """A model class, a training loop and the arrays, all defined here (not importable by name):
    Ray ships them to the workers; the results, load_model and compress.load(builders=) work."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    from slimtune import compress

    class LocalNet(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, int(config["width"])), nn.ReLU(),
                                      nn.Linear(int(config["width"]), int(config["output_dim"])))

        def forward(self, x):
            return self.body(x)

    def local_loop(model, data, config, ctx):
        x, y = torch.tensor(np.array(data.x_train)), torch.tensor(np.array(data.y_train)).long()
        opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
        for epoch in range(1, ctx.epochs + 1):
            for idx in torch.randperm(len(x)).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx].to(ctx.device)), y[idx].to(ctx.device)).backward()
                opt.step()
                ctx.after_step(model)
            ctx.report(epoch)

    x, y = load_digits(return_X_y=True)
    spec = {"name": "t-objects", "task": {"epochs": 3},  # model, loop and data come as objects
            "space": {"lr": {"log_uniform": [0.005, 0.02]}, "batch_size": 64, "width": 16},
            "compress": {"prune": {"method": "magnitude", "sparsity": 0.5, "finetune_epochs": 1},
                         "quantize": {"bits": 8}},
            "search": {"trials": 2, "concurrency": 2, "seed": 0}}
    df = run_sweep(spec, tmp_path / "run", quiet=True, model=LocalNet, train=local_loop, data=(x / 16.0, y))
    ok = df[df["status"] == "ok"]
    assert len(ok) == 2 and (ok["accuracy"] > 0.6).all(), df[["status", "error"]]
    n = int(ok["trial_number"].iloc[0])
    model = load_model(tmp_path / "run", trial=n)  # this process registered LocalNet
    assert model(torch.zeros(2, 64)).shape == (2, 10)
    hook = compress.read_manifest(tmp_path / "run" / ok["artifact"].iloc[0])["recipe"]["hook"]
    assert hook.endswith(":test_model_train_and_data_as_python_objects_from_the_calling_script_LocalNet")
    again = compress.load(tmp_path / "run" / ok["artifact"].iloc[0], builders={hook: LocalNet})
    with torch.no_grad():
        assert torch.equal(again(torch.ones(3, 64)), model(torch.ones(3, 64)))
