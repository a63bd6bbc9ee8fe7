"""How much Pareto front per unit of compute: slimtune versus plain Ray Tune + OptunaSearch.

Same search space, same trial budget (trainings), same seeds, on digits and MNIST-1D:

* ``slimtune``  — run_sweep with the ladder (train once, compress many), two-objective early
  stopping, reused trial processes and data shared through the object store;
* ``plain``     — Ray Tune + OptunaSearch (multi-objective TPE) written the straightforward
  way: a function trainable that loads its data, trains, compresses and reports; no ladder,
  no early stopping, no actor reuse;
* ``random``    — the same plain setup with Optuna's RandomSampler.

Reported per method: final hypervolume of (validation accuracy, size / largest dense size)
with the reference point (accuracy 0, size 1.0) fixed here before running; the trainings and
wall seconds slimtune needs to reach plain's final hypervolume; wall seconds per sweep; the
ideal wall time (sum of trial compute / cores) and the overhead ratio. Writes a plot of
hypervolume against trainings and against wall seconds.

    python benchmarks/search.py --trials 20 --seeds 3 --datasets digits mnist1d

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REF_ACCURACY, REF_SIZE = 0.0, 1.0  # fixed before running: accuracy 0, size = the largest dense model
CORES = os.cpu_count() or 1


def space(dataset: str, trials: int, seed: int, sampler: str, **search) -> dict:
    return {
        "name": f"bench-{dataset}-{sampler}-{seed}",
        "task": {"dataset": dataset, "model": "mlp" if dataset == "digits" else "cnn",
                 "epochs": 8 if dataset == "digits" else 10},
        "objectives": {"accuracy": "max", "size_bytes": "min"},
        "space": {"lr": {"log_uniform": [1e-3, 3e-2]}, "batch_size": {"choice": [32, 64, 128]},
                  "depth": {"int": [1, 3]}, "width": {"choice": [16, 32, 64, 128]}},
        "compress": {"prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.3, 0.95]},
                               "finetune_epochs": 2},
                     "quantize": {"bits": {"choice": [32, 8, 4, 2]}}},
        "search": {"trials": trials, "concurrency": 2, "sampler": sampler, "seed": seed, **search},
    }


def run_slimtune(raw: dict, out: Path) -> tuple[pd.DataFrame, float]:
    from search import run_sweep
    from spaces import parse_spec

    raw = {**raw, "search": {**raw["search"], "ladder": 4, "early_stop": {"grace_epochs": 2, "eta": 3}}}
    t0 = time.time()
    df = run_sweep(parse_spec(raw), out, quiet=True)
    wall = time.time() - t0
    df = df.assign(t=df["ended_at"] - t0)
    own = df["parent"].isna()
    df["training"] = np.where(own, df["trial_number"], df["parent"])
    order = {n: i + 1 for i, n in enumerate(df.loc[own].sort_values("t")["trial_number"])}
    df["k"] = df["training"].map(order)
    df = df[df["k"].notna()]
    return df, wall


def _plain_trainable(config: dict, raw: dict, out_dir: str) -> None:
    """The straightforward trial: load data, build, train, compress, save, report."""
    from ray import tune

    from search._data import load_data
    from search._trial import TrialSetup, run_trial
    from spaces import parse_spec

    spec = parse_spec(raw)
    data = load_data(spec.task, spec.search.seed)
    run_trial(config, data, TrialSetup(out_dir=out_dir, model=spec.task.model, kind=data.kind))


def run_plain(raw: dict, out: Path) -> tuple[pd.DataFrame, float]:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search._sweep import DefineByRun
    from spaces import parse_spec

    spec = parse_spec(raw)
    sampler = (optuna.samplers.TPESampler(seed=spec.search.seed) if spec.search.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=spec.search.seed))
    searcher = OptunaSearch(space=DefineByRun(spec), metric=["accuracy", "size_bytes"], mode=["max", "min"],
                            sampler=sampler)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = tune.with_resources(tune.with_parameters(_plain_trainable, raw=raw, out_dir=str(out)), {"cpu": 1})
    t0 = time.time()
    grid = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=spec.search.trials,
                                                             max_concurrent_trials=2),
                      run_config=tune.RunConfig(storage_path=str(out / "ray"), name="plain", verbose=0)).fit()
    wall = time.time() - t0
    rows = []
    for r in grid:
        m = r.metrics or {}
        if m.get("phase") == "final":
            rows.append({"accuracy": m["accuracy"], "size_bytes": m["size_bytes"], "dense_bytes": m["dense_bytes"],
                         "train_seconds": m["train_seconds"], "t": m["timestamp"] - t0, "status": "ok"})
    df = pd.DataFrame(rows).sort_values("t").reset_index(drop=True)
    df["k"] = np.arange(1, len(df) + 1)
    return df, wall


def hv(df: pd.DataFrame, size_norm: float, log: bool = False) -> float:
    """Hypervolume of (accuracy, size / size_norm); with ``log``, of (accuracy, log10 of that),
    which weighs a 2x smaller model the same at any size (reference: the same point)."""
    from search import hypervolume

    size = df["size_bytes"] / size_norm
    d = df.assign(size_norm=np.log10(size) if log else size, status="ok", feasible=True)
    ref = np.log10(REF_SIZE) if log else REF_SIZE
    return hypervolume(d, {"accuracy": "max", "size_norm": "min"}, {"accuracy": REF_ACCURACY, "size_norm": ref})


def curve(df: pd.DataFrame, size_norm: float, by: str, grid: np.ndarray) -> np.ndarray:
    return np.array([hv(df[df[by] <= g], size_norm) if (df[by] <= g).any() else 0.0 for g in grid])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    ap.add_argument("--plot", default=str(ROOT / "docs" / "search_benchmark.png"))
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "search.csv"), help="per-run records")
    args = ap.parse_args(argv)

    import ray

    ray.init(num_cpus=CORES, include_dashboard=False, logging_level="ERROR")
    records, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            from search import load_data
            from spaces import parse_spec

            load_data(parse_spec(space(dataset, 1, 0, "tpe")).task, 0)  # MNIST-1D cache, outside the timings
            for seed in range(args.seeds):
                runs = {
                    "slimtune": run_slimtune(space(dataset, args.trials, seed, "tpe"), Path(tmp) / f"s-{dataset}-{seed}"),
                    "plain": run_plain(space(dataset, args.trials, seed, "tpe"), Path(tmp) / f"p-{dataset}-{seed}"),
                    "random": run_plain(space(dataset, args.trials, seed, "random"), Path(tmp) / f"r-{dataset}-{seed}"),
                }
                size_norm = max(float(df["dense_bytes"].max()) for df, _ in runs.values())
                ks = np.arange(1, args.trials + 1)
                target = hv(runs["plain"][0], size_norm)
                for method, (df, wall) in runs.items():
                    hk = curve(df, size_norm, "k", ks)
                    reach = next((int(k) for k, h in zip(ks, hk) if h >= target - 1e-12), None)
                    ts = np.linspace(0, wall, 50)
                    curves.setdefault((dataset, method), []).append((hk, ts, curve(df, size_norm, "t", ts)))
                    ideal = float(df["train_seconds"].sum()) / CORES
                    records.append({"dataset": dataset, "seed": seed, "method": method, "final_hv": hk[-1],
                                    "final_hv_log": hv(df, size_norm, log=True),
                                    "trainings_to_plain_hv": reach, "wall_s": wall, "ideal_s": ideal,
                                    "overhead": wall / ideal if ideal else float("nan"), "rows": len(df)})
                    print(records[-1], flush=True)
    ray.shutdown()
    table = pd.DataFrame(records)
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    summary = table.groupby(["dataset", "method"]).agg(
        final_hv=("final_hv", "mean"), final_hv_log=("final_hv_log", "mean"), trainings_to_plain_hv=("trainings_to_plain_hv", "median"),
        wall_s=("wall_s", "mean"), ideal_s=("ideal_s", "mean"), overhead=("overhead", "mean"), rows=("rows", "mean"))
    print()
    print(f"reference point: accuracy {REF_ACCURACY}, size {REF_SIZE} x largest dense model "
          f"(final_hv_log: log10 of that size); "
          f"{args.trials} trainings, {args.seeds} seeds, {CORES} cores")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    _plot(curves, args.plot, args.trials)
    print(f"plot: {args.plot}")
    return 0


def _plot(curves: dict, path: str, trials: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for d, _ in curves})
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
    for j, dataset in enumerate(datasets):
        for method in ("slimtune", "plain", "random"):
            runs = curves.get((dataset, method), [])
            if not runs:
                continue
            hk = np.mean([r[0] for r in runs], axis=0)
            axes[0][j].plot(np.arange(1, trials + 1), hk, label=method)
            for hkr, ts, ht in runs[:1]:
                axes[1][j].plot(ts, ht, label=method)
        axes[0][j].set(title=dataset, xlabel="trainings", ylabel="hypervolume (acc x size/largest dense)")
        axes[1][j].set(xlabel="wall seconds (first seed)", ylabel="hypervolume")
        axes[0][j].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
