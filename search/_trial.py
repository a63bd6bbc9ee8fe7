"""The trial function: the one place where training meets compression.

It runs inside a Ray worker: build the model, train (reporting validation metrics each
epoch), compress as the trial's configuration says, evaluate the compressed model, write
its artifact, and report the objectives.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import compress
from search._data import Data
from search._train import evaluate, latency_ms, train

#: Columns the trial function reports at the end (besides the sampled parameters).
FINAL_KEYS = ("accuracy", "r2", "loss", "test_accuracy", "test_r2", "test_loss", "size_bytes",
              "dense_bytes", "compression_ratio", "params", "nonzero_params", "latency_ms",
              "train_seconds", "node", "artifact")


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent once through Ray's object store)."""

    out_dir: str  # absolute path of the sweep folder
    model: str  # mlp | cnn | module:function
    kind: str
    threads: int = 1


def model_recipe(setup: TrialSetup, data: Data, config: dict[str, Any]) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "input_shape": data.input_shape,
        "output_dim": data.n_outputs,
        "depth": int(config.get("depth", 2)),
        "width": int(config.get("width", 64)),
    }
    if setup.model in ("mlp", "cnn"):
        recipe["arch"] = setup.model
    else:
        hook_config = {k: v for k, v in config.items() if k not in ("seed", "trial_number")}
        recipe.update(arch="hook", hook=setup.model, config={**hook_config, **recipe})
    return recipe


def compression_configs(config: dict[str, Any]) -> tuple[list, list]:
    """(prune configs, quantize configs) chosen for this trial."""
    prune = []
    if config.get("prune_method", "none") == "magnitude":
        prune.append(compress.MagnitudePrune(sparsity=float(config["sparsity"])))
    quant = []
    if int(config.get("bits", 32)) < 32:
        quant.append(compress.AffineQuantize(bits=int(config["bits"]),
                                             per_channel=bool(config.get("per_channel", True)),
                                             symmetric=bool(config.get("symmetric", False))))
    return prune, quant


def run_trial(config: dict[str, Any], data: Data, setup: TrialSetup, report=None) -> dict[str, Any]:
    """Train, compress, evaluate and save one configuration; returns the final metrics.

    ``report(metrics)`` is called once per training epoch and once at the end
    (``ray.tune.report`` inside Ray; any callable in tests).
    """
    if report is None:
        from ray import tune

        report = tune.report
        trial_name = tune.get_context().get_trial_id()
    else:
        trial_name = f"local-{config.get('trial_number', 0)}"
    torch.set_num_threads(setup.threads)
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    t0 = time.perf_counter()
    recipe = model_recipe(setup, data, config)
    model = compress.build_model(recipe)
    metric = "accuracy" if data.kind == "classification" else "r2"

    def on_epoch(epoch: int, val: dict[str, float]) -> None:
        report({"epoch": epoch, "phase": "train", f"val_{metric}": val[metric], "val_loss": val["loss"]})

    common = dict(lr=float(config["lr"]), batch_size=int(config["batch_size"]),
                  weight_decay=float(config.get("weight_decay", 0.0)), seed=seed)
    train(model, data, epochs=int(config["epochs"]), on_epoch=on_epoch, **common)
    prune, quant = compression_configs(config)
    if prune:
        model = compress.compress(model, *prune)
        ft = int(config.get("finetune_epochs", 0))
        if ft:
            masks = compress.sparsity_masks(model)
            train(model, data, epochs=ft, after_step=lambda m: compress.apply_masks_(m, masks),
                  **{**common, "seed": seed + 1})
    if quant:
        model = compress.compress(model, *quant)
    train_seconds = time.perf_counter() - t0

    val = evaluate(model, data.x_val, data.y_val, data.kind)
    test = evaluate(model, data.x_test, data.y_test, data.kind)
    params, nonzero = compress.count_params(model)
    rel = Path("artifacts") / f"{trial_name}.slim"
    path = Path(setup.out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {
        metric: val[metric], "loss": val["loss"],
        f"test_{metric}": test[metric], "test_loss": test["loss"],
    }
    size = compress.save(model, path, recipe=recipe, configs=[*prune, *quant], metrics=metrics)
    dense = compress.dense_bytes(model, recipe)
    final = {
        **metrics,
        "phase": "final",
        "size_bytes": size,
        "dense_bytes": dense,
        "compression_ratio": dense / size,
        "params": params,
        "nonzero_params": nonzero,
        "latency_ms": latency_ms(model, data.x_val),
        "train_seconds": train_seconds,
        "node": _node(),
        "artifact": str(rel),
    }
    report(final)
    return final


def _node() -> str:
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        return f"{socket.gethostname()}/{node_id[:8]}"
    except Exception:
        return f"{socket.gethostname()}/pid{os.getpid()}"
