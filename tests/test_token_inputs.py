"""Data beyond float arrays: integer features (token ids) reach the model as torch.long, are not
standardised, and an Embedding model is pruned and quantized like any other layer."""

from __future__ import annotations

import numpy as np

from slimtune.search import load_model, load_results, run_sweep
from slimtune.search.task.data import load_data
from slimtune.spaces import parse_spec
from tests.test_sweep import digits_spec


def _spec() -> dict:
    spec = digits_spec(name="t-tokens", task={"dataset": "tests.user_hooks:token_data",
                                              "model": "tests.user_hooks:token_net", "epochs": 8},
                       space={"lr": {"log_uniform": [0.01, 0.03]}, "batch_size": 32, "width": 16})
    spec["compress"] = {"prune": {"method": "magnitude", "sparsity": 0.5, "finetune_epochs": 1},
                        "quantize": {"bits": 4}}
    spec["search"] = {**spec["search"], "trials": 2}
    return spec


def test_integer_features_stay_integers_and_are_not_standardised():
    data = load_data(parse_spec(_spec()).task, 0)
    assert data.x_train.dtype == np.int64 and data.x_train.max() < 30
    assert data.preprocess["x_mean"] == 0.0 and data.preprocess["x_std"] == 1.0


def test_a_token_model_sweeps_with_its_embedding_compressed(ray_session, tmp_path):
    run_sweep(parse_spec(_spec()), tmp_path / "run", quiet=True)
    ok = load_results(tmp_path / "run").query("status == 'ok'")
    assert len(ok) == 2 and (ok["accuracy"] > 0.5).all()  # 4 classes: the marker tokens were learned
    assert (ok["uncompressed_params"] == 0).all() and (ok["layer_bits"] == "4,4").all()
    model = load_model(tmp_path / "run", int(ok["trial_number"].iloc[0]), trust_code=True)
    weight = model.embed.weight.detach()
    assert float((weight == 0).float().mean()) > 0.3  # the embedding was pruned
