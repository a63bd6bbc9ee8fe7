"""Compression benchmark: artifact sizes, MACs and fp32/int8 CPU latency per
method, and Deep Compression on LeNet-300-100 found by a small Optuna sweep.

    python benchmarks/compression.py [--trials N] [--repeats N] [--part all|methods|deep]
                                     [--format table|json]

Part "methods": untrained, seeded models; every size is the length of the
artifact `compress.save` writes, compared with the same container holding the
dense fp32 model (`dense_bytes`).  Latency is the median of ``--repeats``
forward passes on one CPU thread, fp32 and through `compress.to_int8`.

Part "deep": the Deep Compression experiment in spirit (Han et al. 2016:
LeNet-300-100 pruned, fine-tuned and quantized 40x with no accuracy loss).
The LeNet-300-100 shape (hidden 300 and 100) is trained on MNIST-1D (40
inputs) and on digits (64 inputs); then an Optuna TPE sweep over the
compression of that one trained model (structured ratio, magnitude sparsity
reached gradually while fine-tuning, fine-tune epochs, bits, per-channel,
PTQ/QAT) maximises the compression ratio subject to a validation accuracy at
most 1 point below the dense model's.  The chosen setting's test accuracy is
reported too (the test split is never searched on).

Runs in about 5 minutes on 2 cores (one torch thread).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compress  # noqa: E402
from compress import AffineQuantize, FakeQuantize, MagnitudePrune, StructuredPrune  # noqa: E402

RECIPES = {
    "mlp-digits": {"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 2, "width": 128},
    "mlp-wide": {"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 2, "width": 1024},
    "cnn1d-mnist1d": {"arch": "cnn", "input_shape": [40], "output_dim": 10, "depth": 3, "width": 32},
    "cnn2d-digits": {"arch": "cnn", "input_shape": [8, 8], "output_dim": 10, "depth": 2, "width": 32},
}
METHODS = {
    "dense": (),
    "prune80": (MagnitudePrune(sparsity=0.8),),
    "int8": (AffineQuantize(bits=8),),
    "int4": (AffineQuantize(bits=4),),
    "prune80+int4": (MagnitudePrune(sparsity=0.8), AffineQuantize(bits=4)),
    "struct50": (StructuredPrune(ratio=0.5),),
    "struct50+int4": (StructuredPrune(ratio=0.5), AffineQuantize(bits=4)),
}
LENET = {"arch": "mlp", "output_dim": 10, "depth": 2, "width": [300, 100]}
DATASETS = {"mnist1d": 40, "digits": 30}  # dataset -> dense training epochs
TARGET_RATIO, MAX_LOSS = 40.0, 0.01
#: The first point of each sweep (about the middle of the space); TPE takes over after 10.
STARTS = [
    {"structured": 0.6, "sparsity": 0.6, "finetune_epochs": 20, "bits": 5, "per_channel": False, "qat": True},
]


def run_methods(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for model_name, recipe in RECIPES.items():
        torch.manual_seed(0)
        model = compress.build_model(recipe)
        for method, configs in METHODS.items():
            report = compress.summary(compress.compress(model, *configs), repeats=repeats)
            rows.append({"model": model_name, "method": method, **report})
    return rows


# --------------------------------------------------------------- Deep Compression


def _load(dataset: str):
    import search
    import spaces

    return search.load_data(spaces.Task(dataset=dataset, model="mlp", epochs=spaces.Fixed(1)), seed=0)


def _accuracy(model: torch.nn.Module, x, y) -> float:
    from search import evaluate

    return evaluate(model, x, y, "classification")["accuracy"]


def compress_setting(dense: torch.nn.Module, data, p: dict[str, Any], seed: int) -> tuple[torch.nn.Module, list]:
    """Structured prune -> gradual magnitude pruning while fine-tuning -> (QAT) -> quantize."""
    from search import train

    args = dict(lr=1e-3, batch_size=64, seed=seed)
    configs: list = []
    model = compress.compress(dense)
    if p["structured"] > 0:
        configs.append(StructuredPrune(ratio=p["structured"]))
        model = compress.compress(model, configs[-1])
    magnitude = MagnitudePrune(sparsity=p["sparsity"])
    configs.append(magnitude)
    steps = p["finetune_epochs"] * math.ceil(len(data.x_train) / args["batch_size"])
    train(model, data, epochs=p["finetune_epochs"],
          after_step=compress.gradual_pruning(model, magnitude, steps), **args)
    quant = dict(bits=p["bits"], per_channel=p["per_channel"])
    if p["qat"]:
        masks = compress.sparsity_masks(model)
        configs.append(FakeQuantize(**quant))
        model = compress.compress(model, configs[-1])
        train(model, data, epochs=2, after_step=lambda m: compress.apply_masks_(m, masks),
              **{**args, "seed": seed + 1})
    configs.append(AffineQuantize(**quant))
    return compress.compress(model, configs[-1]), configs


def run_deep(trials: int, repeats: int) -> list[dict[str, Any]]:
    import optuna

    from search import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for dataset, epochs in DATASETS.items():
        t0 = time.perf_counter()
        data = _load(dataset)
        recipe = {**LENET, "input_shape": data.input_shape}
        torch.manual_seed(0)
        dense = compress.build_model(recipe)
        train(dense, data, lr=1e-3, batch_size=64, epochs=epochs, seed=0)
        dense_val = _accuracy(dense, data.x_val, data.y_val)
        dense_bytes = compress.dense_bytes(dense)
        tmp = Path(tempfile.mkdtemp())

        def objective(trial: optuna.Trial) -> float:
            p = {
                "structured": trial.suggest_float("structured", 0.3, 0.85),
                "sparsity": trial.suggest_float("sparsity", 0.3, 0.9),
                "finetune_epochs": trial.suggest_int("finetune_epochs", 10, 30),
                "bits": trial.suggest_categorical("bits", [3, 4, 5, 6, 8]),
                "per_channel": trial.suggest_categorical("per_channel", [False, True]),
                "qat": trial.suggest_categorical("qat", [False, True]),
            }
            small, configs = compress_setting(dense, data, p, seed=1000 + trial.number)
            size = compress.save(small, tmp / f"{trial.number}.slim")
            acc = _accuracy(small, data.x_val, data.y_val)
            trial.set_user_attr("val_accuracy", acc)
            trial.set_constraint("accuracy_loss", (dense_val - MAX_LOSS) - acc)
            return dense_bytes / size

        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=min(10, trials), multivariate=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for start in STARTS:
            study.enqueue_trial(start)
        study.optimize(objective, n_trials=trials)
        feasible = [t for t in study.trials if t.constraints["accuracy_loss"] <= 0]
        best = max(feasible, key=lambda t: t.value) if feasible else max(
            study.trials, key=lambda t: t.user_attrs["val_accuracy"])
        p = {**best.params}
        path = tmp / f"{best.number}.slim"
        size = path.stat().st_size
        small = compress.load(path)  # the chosen trial's artifact, as a user would load it
        dense_report = compress.summary(dense, repeats=repeats)
        report = compress.summary(small, repeats=repeats)
        rows.append({
            "dataset": dataset,
            "dense_val_acc": dense_val,
            "dense_test_acc": _accuracy(dense, data.x_test, data.y_test),
            "dense_bytes": dense_bytes,
            "artifact_bytes": size,
            "compression_ratio": dense_bytes / size,
            "val_acc": _accuracy(small, data.x_val, data.y_val),
            "test_acc": _accuracy(small, data.x_test, data.y_test),
            "int8_test_acc": _accuracy(compress.to_int8(small), data.x_test, data.y_test),
            "nonzero_params": report["nonzero_params"],
            "params": report["params"],
            "dense_params": dense_report["params"],
            "fp32_ms_b256_dense": dense_report["latency_ms_b256"],
            "fp32_ms_b256": report["latency_ms_b256"],
            "int8_ms_b256": report["int8_latency_ms_b256"],
            "feasible_trials": len(feasible),
            "trials": len(study.trials),
            "setting": " ".join(f"{k}={_short(v)}" for k, v in p.items()),
            "seconds": time.perf_counter() - t0,
        })
    return rows


def _short(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="Optuna trials per dataset (deep)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per latency")
    parser.add_argument("--part", choices=["all", "methods", "deep"], default="all")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out: dict[str, list[dict[str, Any]]] = {}
    if args.part in ("all", "methods"):
        out["methods"] = run_methods(args.repeats)
    if args.part in ("all", "deep"):
        out["deep"] = run_deep(args.trials, args.repeats)
    if args.format == "json":
        print(json.dumps(out, indent=1))
        return 0
    if "methods" in out:
        print(f"torch {torch.__version__}, 1 thread; latency in ms (median of {args.repeats})\n")
        print(_table(out["methods"], [
            "model", "method", "dense_bytes", "artifact_bytes", "compression_ratio", "bits_per_weight",
            "nonzero_params", "macs", "latency_ms_b1", "int8_latency_ms_b1", "latency_ms_b256",
            "int8_latency_ms_b256"]))
        print()
    if "deep" in out:
        print(f"LeNet-300-100, target >= {TARGET_RATIO:g}x at <= {100 * MAX_LOSS:g} point validation "
              "accuracy loss\n")
        print(_table(out["deep"], [
            "dataset", "dense_val_acc", "dense_test_acc", "dense_bytes", "artifact_bytes",
            "compression_ratio", "val_acc", "test_acc", "int8_test_acc", "nonzero_params",
            "fp32_ms_b256_dense", "fp32_ms_b256", "int8_ms_b256", "feasible_trials", "trials",
            "seconds"]))
        print()
        for row in out["deep"]:
            print(f"{row['dataset']}: {row['setting']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
