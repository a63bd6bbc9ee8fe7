"""Compression benchmark: artifact sizes, MACs and fp32/int8 CPU latency per
method, and Deep Compression on LeNet-300-100 found by a small Optuna sweep.

    python benchmarks/compression.py                # methods + deep, 3 seeds, 40 trials
    python benchmarks/compression.py --smoke        # 1 seed, 2 trials, short training: checks it runs
    python benchmarks/compression.py [--seeds N] [--trials N] [--repeats N]
                                     [--part all|methods|deep] [--format table|json]

Every compression ratio is given against two baselines, both measured, never assumed:

* ``x_fp32``: raw fp32 weights, params x 4 bytes of the dense model (Deep Compression's
  convention, Han et al. 2016);
* ``x_lzma``: the same dense model written by ``compress.save`` (slimtune's own container,
  LZMA included), so the container's own compression is not counted as ours.

Part "methods": untrained, seeded models; every size is the length of the artifact
`compress.save` writes.  Latency is the median of ``--repeats`` forward passes on one CPU
thread, fp32 and through `compress.to_int8`.

Part "deep": the Deep Compression experiment in spirit (Han et al. 2016: LeNet-300-100
pruned, fine-tuned and quantized 40x with no accuracy loss).  Per seed, the LeNet-300-100
shape (hidden 300 and 100) is trained on MNIST-1D (40 inputs) and on digits (64 inputs),
then an Optuna TPE sweep (seeded) over the compression of that one trained model
(structured ratio, magnitude sparsity reached gradually while fine-tuning, fine-tune
epochs, bits, per-channel, PTQ/QAT) maximises the compression ratio subject to a
validation accuracy at most 1 point below the dense model's.  The chosen setting's test
accuracy is reported too (the test split is never searched on).  The data split is the
same for every seed; the seed sets the dense model's initialisation and training order
and the sampler.  Reported per seed and as min / median / max over the seeds.

Writes benchmarks/results/compression_methods.csv, compression_deep.csv (one row per
dataset and seed) and compression_summary.md (the tables printed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimtune import compress
from slimtune.compress import AffineQuantize, FakeQuantize, MagnitudePrune, StructuredPrune

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


def baselines(dense: torch.nn.Module, tmp: Path) -> dict[str, int]:
    """The two sizes a ratio is taken against: raw fp32 (params x 4) and `compress.save` of ``dense``."""
    params, _ = compress.count_params(dense)
    return {"fp32_bytes": 4 * params, "lzma_dense_bytes": compress.save(dense, tmp / "dense.slim")}


def run_methods(repeats: int) -> list[dict[str, Any]]:
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for model_name, recipe in RECIPES.items():
        torch.manual_seed(0)
        model = compress.build_model(recipe)
        base = baselines(model, tmp)
        for method, configs in METHODS.items():
            report = compress.summary(compress.compress(model, *configs), repeats=repeats)
            rows.append({"model": model_name, "method": method, **base, **report,
                         "x_fp32": base["fp32_bytes"] / report["artifact_bytes"],
                         "x_lzma": base["lzma_dense_bytes"] / report["artifact_bytes"]})
    return rows


# --------------------------------------------------------------- Deep Compression


def _load(dataset: str):
    from slimtune import search, spaces

    return search.load_data(spaces.Task(dataset=dataset, model="mlp", epochs=spaces.Fixed(1)), seed=0)


def _accuracy(model: torch.nn.Module, x, y) -> float:
    from slimtune.search import evaluate

    return evaluate(model, x, y, "classification")["accuracy"]


def compress_setting(dense: torch.nn.Module, data, p: dict[str, Any], seed: int) -> tuple[torch.nn.Module, list]:
    """Structured prune -> gradual magnitude pruning while fine-tuning -> (QAT) -> quantize."""
    from slimtune.search import Fit, train

    args = {"lr": 1e-3, "batch_size": 64, "seed": seed}
    configs: list = []
    model = compress.compress(dense)
    if p["structured"] > 0:
        configs.append(StructuredPrune(ratio=p["structured"]))
        model = compress.compress(model, configs[-1])
    magnitude = MagnitudePrune(sparsity=p["sparsity"])
    configs.append(magnitude)
    steps = p["finetune_epochs"] * math.ceil(len(data.x_train) / args["batch_size"])
    train(model, data, Fit(epochs=p["finetune_epochs"], **args),
          after_step=compress.gradual_pruning(model, magnitude, steps))
    quant = {"bits": p["bits"], "per_channel": p["per_channel"]}
    if p["qat"]:
        masks = compress.sparsity_masks(model)
        configs.append(FakeQuantize(**quant))
        model = compress.compress(model, configs[-1])
        train(model, data, Fit(epochs=2, **{**args, "seed": seed + 1}),
              after_step=lambda m: compress.apply_masks_(m, masks))
    configs.append(AffineQuantize(**quant))
    return compress.compress(model, configs[-1]), configs


def run_deep_one(dataset: str, epochs: int, seed: int, trials: int, repeats: int, smoke: bool) -> dict[str, Any]:
    """One dataset, one seed: train LeNet-300-100, sweep its compression, measure the chosen artifact."""
    import optuna

    from slimtune.search import Fit, train

    t0 = time.perf_counter()
    data = _load(dataset)
    recipe = {**LENET, "input_shape": data.input_shape}
    torch.manual_seed(seed)
    dense = compress.build_model(recipe)
    train(dense, data, Fit(lr=1e-3, batch_size=64, epochs=2 if smoke else epochs, seed=seed))
    dense_val = _accuracy(dense, data.x_val, data.y_val)
    tmp = Path(tempfile.mkdtemp())
    base = baselines(dense, tmp)
    dense_bytes = compress.dense_bytes(dense)
    ft_range = (1, 2) if smoke else (10, 30)

    def objective(trial: optuna.Trial) -> float:
        p = {
            "structured": trial.suggest_float("structured", 0.3, 0.85),
            "sparsity": trial.suggest_float("sparsity", 0.3, 0.9),
            "finetune_epochs": trial.suggest_int("finetune_epochs", *ft_range),
            "bits": trial.suggest_categorical("bits", [3, 4, 5, 6, 8]),
            "per_channel": trial.suggest_categorical("per_channel", [False, True]),
            "qat": trial.suggest_categorical("qat", [False, True]),
        }
        small, _ = compress_setting(dense, data, p, seed=1000 * (seed + 1) + trial.number)
        size = compress.save(small, tmp / f"{trial.number}.slim")
        acc = _accuracy(small, data.x_val, data.y_val)
        trial.set_user_attr("val_accuracy", acc)
        trial.set_constraint("accuracy_loss", (dense_val - MAX_LOSS) - acc)
        return base["fp32_bytes"] / size

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, trials), multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for start in STARTS:
        study.enqueue_trial({**start, "finetune_epochs": min(max(start["finetune_epochs"], ft_range[0]), ft_range[1])})
    t_sweep = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    sweep_s = time.perf_counter() - t_sweep
    feasible = [t for t in study.trials if t.constraints["accuracy_loss"] <= 0]
    best = max(feasible, key=lambda t: t.value) if feasible else max(
        study.trials, key=lambda t: t.user_attrs["val_accuracy"])
    path = tmp / f"{best.number}.slim"
    size = path.stat().st_size
    small = compress.load(path)  # the chosen trial's artifact, as a user would load it
    dense_report = compress.summary(dense, repeats=repeats)
    report = compress.summary(small, repeats=repeats)
    return {
        "dataset": dataset,
        "seed": seed,
        "dense_val_acc": dense_val,
        "dense_test_acc": _accuracy(dense, data.x_test, data.y_test),
        "dense_params": dense_report["params"],
        **base,
        "dense_container_bytes": dense_bytes,
        "artifact_bytes": size,
        "x_fp32": base["fp32_bytes"] / size,
        "x_lzma": base["lzma_dense_bytes"] / size,
        "x_container": dense_bytes / size,
        "val_acc": _accuracy(small, data.x_val, data.y_val),
        "test_acc": _accuracy(small, data.x_test, data.y_test),
        "int8_test_acc": _accuracy(compress.to_int8(small), data.x_test, data.y_test),
        "met_accuracy": bool(feasible),
        "nonzero_params": report["nonzero_params"],
        "params": report["params"],
        "fp32_ms_b256_dense": dense_report["latency_ms_b256"],
        "fp32_ms_b256": report["latency_ms_b256"],
        "int8_ms_b256": report["int8_latency_ms_b256"],
        "feasible_trials": len(feasible),
        "trials": len(study.trials),
        "setting": " ".join(f"{k}={_short(v)}" for k, v in best.params.items()),
        "sweep_s_per_trial": sweep_s / max(1, trials),
        "seconds": time.perf_counter() - t0,
    }


def run_deep(seeds: int, trials: int, repeats: int, smoke: bool) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for dataset, epochs in DATASETS.items():
        for seed in range(seeds):
            rows.append(run_deep_one(dataset, epochs, seed, trials, repeats, smoke))
            r = rows[-1]
            print(f"{dataset} seed {seed}: {r['x_fp32']:.1f}x fp32, {r['x_lzma']:.1f}x lzma dense, "
                  f"test {r['test_acc']:.3f} (dense {r['dense_test_acc']:.3f}), {r['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    return rows


def spread(rows: list[dict[str, Any]], cols: list[str]) -> list[dict[str, Any]]:
    """Per dataset: "min / median / max" over the seeds of each column."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        cell = {"dataset": dataset, "seeds": len(group), "met": f"{sum(r['met_accuracy'] for r in group)}/{len(group)}"}
        for c in cols:
            v = sorted(float(r[c]) for r in group)
            cell[c] = " / ".join(f"{x:.4g}" for x in (v[0], statistics.median(v), v[-1]))
        out.append(cell)
    return out


def _short(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


METHOD_COLS = ["model", "method", "fp32_bytes", "lzma_dense_bytes", "artifact_bytes", "x_fp32", "x_lzma",
               "bits_per_weight", "nonzero_params", "macs", "latency_ms_b1", "int8_latency_ms_b1",
               "latency_ms_b256", "int8_latency_ms_b256"]
DEEP_COLS = ["dataset", "seed", "dense_val_acc", "dense_test_acc", "fp32_bytes", "lzma_dense_bytes", "artifact_bytes",
             "x_fp32", "x_lzma", "val_acc", "test_acc", "int8_test_acc", "met_accuracy", "nonzero_params",
             "fp32_ms_b256_dense", "fp32_ms_b256", "int8_ms_b256", "feasible_trials", "trials", "seconds"]
SPREAD_COLS = ["x_fp32", "x_lzma", "dense_test_acc", "test_acc", "artifact_bytes", "seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of the deep part (default 3)")
    parser.add_argument("--trials", type=int, default=40, help="Optuna trials per dataset and seed (deep)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per latency")
    parser.add_argument("--part", choices=["all", "methods", "deep"], default="all")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 2 trials, 2 epochs; results *_smoke.*")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.trials, args.repeats = 1, 2, 3
    suffix = "_smoke" if args.smoke else ""
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} before starting; other work is running and the "
              "latencies and times will not be clean", file=sys.stderr)
    out: dict[str, list[dict[str, Any]]] = {}
    if args.part in ("all", "methods"):
        out["methods"] = run_methods(args.repeats)
    if args.part in ("all", "deep"):
        out["deep"] = run_deep(args.seeds, args.trials, args.repeats, args.smoke)
    results = Path(args.out)
    results.mkdir(parents=True, exist_ok=True)
    text = []
    if "methods" in out:
        _csv(out["methods"], results / f"compression_methods{suffix}.csv")
        text += [(f"torch {torch.__version__}, 1 thread; latency in ms (median of {args.repeats}); x_fp32 = "
                  "params x 4 / artifact bytes, x_lzma = the dense model in slimtune's container / artifact bytes\n"),
                 _table(out["methods"], METHOD_COLS), ""]
    if "deep" in out:
        _csv(out["deep"], results / f"compression_deep{suffix}.csv")
        text += [(f"LeNet-300-100, target >= {TARGET_RATIO:g}x (fp32) at <= {100 * MAX_LOSS:g} point validation "
                  f"accuracy loss; {args.trials} trials per dataset and seed, seeds 0-{args.seeds - 1}\n"),
                 _table(out["deep"], DEEP_COLS), "",
                 "min / median / max over seeds (met: seeds whose chosen setting kept the validation accuracy)\n",
                 _table(spread(out["deep"], SPREAD_COLS), ["dataset", "seeds", "met", *SPREAD_COLS]), ""]
        text += [f"{r['dataset']} seed {r['seed']}: {r['setting']}" for r in out["deep"]]
    text.append(f"\ntotal {time.perf_counter() - started:.0f} s; load average (1 min) {load_start[0]:.2f} at the "
                f"start, {os.getloadavg()[0]:.2f} at the end")
    (results / f"compression_summary{suffix}.md").write_text("\n".join(text) + "\n")
    if args.format == "json":
        print(json.dumps(out, indent=1))
    else:
        print("\n".join(text))
    return 0


def _csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    raise SystemExit(main())
