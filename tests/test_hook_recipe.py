"""A hook model's artifact holds what builds the model, nothing else (issue 19, item 4).

``model_recipe`` stores in a hook recipe's ``config`` only the keys the hook read while
building (all the parameters it was shown when it reads the mapping whole), never what the
searcher attached to the trial for itself: the same model has the same artifact with or
without ladder rungs, a teacher or a promotion.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from slimtune import compress
from slimtune.search.task.data import Data
from slimtune.search.task.recipe import BOOKKEEPING
from slimtune.search.trial import TrialSetup, ladder_configs, model_recipe, run_trial
from slimtune.spaces import parse_spec

HOOK = "tests.user_hooks:residual_net"
SPEC = {
    "name": "t-hook-recipe",
    "task": {"dataset": "tests.user_data:blobs", "model": HOOK, "epochs": 1},
    "space": {"lr": 0.03, "batch_size": 32, "width": {"choice": [8, 16]}, "depth": 1, "gain": 1.0},
    "compress": {"prune": {"method": "magnitude", "sparsity": {"uniform": [0.3, 0.9]}},
                 "quantize": {"bits": {"choice": [8, 4]}}},
    "search": {"trials": 1, "concurrency": 1, "sampler": "random", "seed": 0},
}
PARAMS = {"lr": 0.03, "batch_size": 32, "width": 8, "depth": 1, "gain": 1.0, "epochs": 1,
          "prune_method": "magnitude", "sparsity": 0.5, "bits": 8}


def _data() -> Data:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (np.arange(60) % 3).astype(np.int64)
    return Data(x[:40], y[:40], x[40:50], y[40:50], x[50:], y[50:], "classification", 3)


def _setup(model: str = HOOK, **kw) -> TrialSetup:
    return TrialSetup(out_dir="", model=model, kind="classification", **kw)


def _bookkeeping(config: dict) -> dict:
    """``config`` as the searcher hands it out: ladder rungs, a teacher, a promotion, a prediction."""
    spec = parse_spec(SPEC)
    return {**config, "ladder_configs": ladder_configs(spec, config, 3), "teacher": "teachers/3.slim",
            "teacher_trial": 3, "predicted_size_bytes": 1234, "budget": 1, "parent": 2}


def _artifact(recipe: dict) -> bytes:
    torch.manual_seed(0)
    model = compress.build_model(recipe)
    with tempfile.TemporaryDirectory() as d:
        compress.save(model, Path(d) / "m.slim", recipe=recipe)
        return (Path(d) / "m.slim").read_bytes()


# ---------------------------------------------------------------- hooks of these tests


class _Lazy(nn.Module):
    """Keeps its configuration and reads ``scale`` of it only when run."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = config
        self.lin = nn.Linear(4, int(config["output_dim"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * float(self.config["scale"])


def lazy_net(config: dict) -> nn.Module:
    return _Lazy(config)


def splat_net(config: dict) -> nn.Module:
    """Reads its configuration whole (``**config``)."""
    def build(*, input_shape, output_dim, width, **rest):
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.ReLU(), nn.Linear(width, output_dim))

    return build(**config)


def random_net(config: dict) -> nn.Module:
    """Draws its width from Python's global RNG (the trial seeds it)."""
    width = random.randrange(8, 64)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, config["output_dim"]))


# ---------------------------------------------------------------- without Ray


@pytest.mark.parametrize("with_spec", [False, True])
def test_the_recipe_holds_only_what_the_hook_read_and_no_bookkeeping(with_spec):
    setup = _setup(spec=parse_spec(SPEC) if with_spec else None, ladder=3)
    own = {**PARAMS, "seed": 17, "trial_number": 4}
    plain = model_recipe(setup, _data(), own)
    assert model_recipe(setup, _data(), _bookkeeping(own)) == plain
    # residual_net reads input_shape, width, output_dim, depth and gain: nothing else is kept
    assert plain["config"] == {"width": 8, "depth": 1, "gain": 1.0, "input_shape": [4], "output_dim": 3}
    assert not set(plain["config"]) & BOOKKEEPING
    assert len(_artifact(model_recipe(setup, _data(), _bookkeeping(own)))) == len(_artifact(plain))
    # a key the hook looked up but the trial lacks (gain: config.get default) is not invented
    without_gain = model_recipe(setup, _data(), {k: v for k, v in own.items() if k != "gain"})
    assert "gain" not in without_gain["config"]


def test_a_hook_that_reads_its_config_whole_gets_and_keeps_the_parameters_only():
    setup = _setup("tests.test_hook_recipe:splat_net")
    recipe = model_recipe(setup, _data(), _bookkeeping({**PARAMS, "seed": 1, "trial_number": 0}))
    assert set(recipe["config"]) == {*PARAMS, "input_shape", "output_dim"}
    # with the spec known, only its declared parameters are shown (an unknown key is not)
    declared = model_recipe(_setup("tests.test_hook_recipe:splat_net", spec=parse_spec(SPEC)), _data(),
                            {**PARAMS, "seed": 1, "note": "mine"})
    assert declared["config"] == recipe["config"]


def test_a_hook_that_keeps_its_config_keeps_all_of_it_and_its_artifact_loads():
    setup = _setup("tests.test_hook_recipe:lazy_net")
    recipe = model_recipe(setup, _data(), {"scale": 2.0, "lr": 0.1, "seed": 3, "teacher": None})
    assert recipe["config"] == {"scale": 2.0, "lr": 0.1, "input_shape": [4], "output_dim": 3, "depth": 2, "width": 64}
    x = torch.ones(2, 4)
    torch.manual_seed(0)
    model = compress.build_model(recipe)
    assert torch.allclose(compress.load(_artifact(recipe), trust_code=True)(x), model(x))


def test_the_recipe_leaves_the_global_rngs_as_they_were():
    setup = _setup("tests.test_hook_recipe:random_net")
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()
    recipe = model_recipe(setup, _data(), {"lr": 0.1, "seed": 5})
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.random.get_rng_state(), states[2])
    assert set(recipe["config"]) == {"output_dim"}


def test_the_artifact_rebuilds_the_same_model():
    recipe = model_recipe(_setup(), _data(), _bookkeeping({**PARAMS, "seed": 2}))
    blob = _artifact(recipe)
    torch.manual_seed(0)
    model = compress.build_model(recipe)
    again = compress.load(blob, trust_code=True)
    x = torch.randn(3, 4)
    assert torch.allclose(again(x), model(x))


def test_a_trial_stores_the_same_artifact_with_and_without_bookkeeping(tmp_path):
    """run_trial without Ray: the trial with ladder rungs, a (missing) teacher and a promotion's
    keys stores an artifact of the same length as the bare trial; its rungs share its recipe."""
    spec = parse_spec(SPEC)
    data = _data()
    own = {**PARAMS, "seed": 17, "trial_number": 0}
    plain = run_trial(own, data, TrialSetup(out_dir=str(tmp_path / "a"), model=HOOK, kind=data.kind, spec=spec),
                      report=lambda m: None)
    busy = {**_bookkeeping(own), "teacher": None, "teacher_trial": None}
    ladder = run_trial(busy, data, TrialSetup(out_dir=str(tmp_path / "b"), model=HOOK, kind=data.kind, spec=spec,
                                              ladder=3), report=lambda m: None)
    assert len(ladder["ladder"]) == 3
    assert ladder["size_bytes"] == plain["size_bytes"]
    stored = compress.load(tmp_path / "b" / ladder["artifact"], trust_code=True)
    assert compress.recipe_of(stored) == compress.recipe_of(compress.load(tmp_path / "a" / plain["artifact"],
                                                                           trust_code=True))
    for rung in ladder["ladder"]:
        rebuilt = compress.load(tmp_path / "b" / rung["artifact"], trust_code=True)
        assert compress.recipe_of(rebuilt) == compress.recipe_of(stored)


# ---------------------------------------------------------------- a sweep


def test_a_sweeps_hook_artifact_does_not_depend_on_the_ladder(ray_session, tmp_path):
    from slimtune.cli import main
    from slimtune.search import load_results

    sizes = {}
    for ladder in (0, 3):
        spec = {**SPEC, "search": {**SPEC["search"], "ladder": ladder}}
        path = tmp_path / f"spec{ladder}.yaml"
        path.write_text(yaml.safe_dump(spec))
        out = tmp_path / f"run{ladder}"
        assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
        df = load_results(out)
        assert (df["status"] == "ok").all(), df["error"].tolist()
        own = df[df["parent"].isna()] if "parent" in df else df
        sizes[ladder] = int(own["size_bytes"].iloc[0])
        if ladder:
            assert len(df) == 1 + ladder
            exported = tmp_path / "m.pt"
            assert main(["export", str(out), "--trial", str(int(own["trial_number"].iloc[0])), "--out",
                         str(exported), "--trust-code"]) == 0
            assert exported.exists()
    assert sizes[0] == sizes[3]
