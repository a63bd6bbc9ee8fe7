"""A real sweep (shared Ray) with structured pruning + QAT: the rows, their columns and
artifacts, and dense_bytes measured on the model before it was pruned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimtune import compress
from slimtune.cli import main
from slimtune.search import load_results
from slimtune.spaces import METHODS


@pytest.mark.slow
def test_structured_pruning_and_qat_sweep(ray_session, tmp_path: Path) -> None:
    spec = {
        "name": "t-struct-qat",
        "task": {"dataset": "digits", "model": "mlp", "epochs": 2},
        "objectives": {"accuracy": "max", "compression_ratio": "max"},
        "constraints": {"latency_ms": {"max": 1000}},
        "space": {"lr": 0.01, "batch_size": 64, "depth": 1, "width": {"choice": [16, 32]}},
        "compress": {"prune": {"method": "structured", "sparsity": 0.5, "finetune_epochs": 1},
                     "quantize": {"bits": 4, "mode": "qat", "qat_epochs": 1}},
        "search": {"trials": 2, "concurrency": 2, "sampler": "random", "seed": 3},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert len(df) == 2 and (df["status"] == "ok").all(), df["error"].tolist()
    for col in ["epochs", *(c for method in METHODS.values() for c in method.columns)]:  # always a column
        assert col in df.columns, col
    assert (df["prune_method"] == "structured").all() and (df["sparsity"] == 0.5).all()
    assert (df["quant_mode"] == "qat").all() and (df["qat_epochs"] == 1).all() and (df["bits"] == 4).all()
    for col in ("threshold", "scope", "gradual"):  # magnitude-only parameters stay empty
        assert df[col].isna().all(), col
    for _, row in df.iterrows():
        width = int(row["width"])
        recipe = {"arch": "mlp", "input_shape": [8, 8], "output_dim": 10, "depth": 1, "width": width}
        unpruned = compress.build_model(recipe)
        # dense_bytes is the model before structured pruning shrank it, as dense fp32
        assert row["dense_bytes"] == compress.dense_bytes(unpruned, recipe)
        assert row["compression_ratio"] == row["dense_bytes"] / row["size_bytes"]
        assert row["params"] < compress.count_params(unpruned)[0]
        artifact = out / row["artifact"]
        assert artifact.stat().st_size == row["size_bytes"] < row["dense_bytes"] / 4
        manifest = compress.read_manifest(artifact)
        assert manifest["format"] == 3  # the configs are the row's, not repeated in the file
        model = compress.load(artifact)
        assert model[1].out_features == width // 2
        assert compress.count_params(model)[0] == row["params"]
        x = torch.from_numpy(np.zeros((3, 8, 8), dtype=np.float32))
        assert model(x).shape == (3, 10)
        assert np.isfinite(row["accuracy"]) and 0 <= row["accuracy"] <= 1
