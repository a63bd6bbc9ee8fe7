"""Pareto front per training and per wall-clock second: slimtune against plain Ray Tune + OptunaSearch.

Three arms, same search space (the spec's, sampled by the same define-by-run function), same
trial seeds, same data split, same trial function for both plain arms:

* ``slimtune``        — ``search.run_sweep`` on the spec: ladder (4 more compression settings
  per trained model), two-objective early stopping, reused actors, data shared once.
* ``plain-defaults``  — what a user writes first: ``tune.Tuner`` + ``OptunaSearch`` with
  ``TPESampler(seed=seed)`` (Optuna's defaults: independent TPE, 10 random start-up trials),
  Tune's default ``reuse_actors`` (False in Ray 2.60), every trial loads its own data.
* ``plain-tuned``     — what an expert writes: the sampler slimtune's ``make_sampler`` builds
  (multivariate TPE, the same ``n_startup_trials``), ``reuse_actors=True``, data built once in
  the driver and sent with ``tune.with_parameters``.

Both plain arms run ``search.trial.run_trial`` (train, compress as the configuration says,
measure, write the artifact): only the searching differs. They have no ladder, no early
stopping and no infeasible-skipping: the ladder and the two-objective stopping are what
slimtune adds (Tune's schedulers and Optuna's pruners rank one metric only, so an expert has no
two-objective scheduler to switch on), and the spec has no constraints, so nothing is skipped.
Both plain arms set ``max_concurrent_trials`` to the spec's concurrency (2), so Tune does not
ask TPE for configurations ahead of the results; this favours the plain arms.

Measured per task, per seed, per arm (the arms' order rotates with the seed: A,B,C / B,C,A / ...;
the machine's load average is recorded at the start and the end of every arm):

* the wall time of the sweep (Ray started once beforehand, not counted; data loading counted)
  and the end time of every training; a ladder rung counts at its training's end time;
* hypervolume of the validation-chosen front (Pareto set of (validation accuracy, size) among
  the rows finished by then) re-scored on the test split, i.e. of (test accuracy, size) of
  those rows — per number of trainings (k = trials/4, trials/2, trials; a stopped trial is a
  training) and at equal wall-clock budgets (fractions 0.25, 0.5, 1 of T, the shortest arm's
  total time on that seed and task);
* two hypervolumes, reference point fixed here in absolute units: accuracy 0 and
  ``SIZE_REF`` bytes per task (just above the largest dense model in the space).
  ``hv_lin``: accuracy x (SIZE_REF - size) / SIZE_REF (dominated by the large, accurate
  models); ``hv_log``: accuracy x log10(SIZE_REF / size), in accuracy x decades, which weighs
  every halving of size alike and so rewards small models. Claims about small models are
  carried by ``hv_log``; ``hv_lin`` is reported so a reader sees both.

    python benchmarks/search.py                 # 5 seeds x 2 tasks x 3 arms, 20 trainings each
    python benchmarks/search.py --smoke         # 1 seed, 3 trainings, 2 epochs: checks it runs

Writes benchmarks/results/search_runs.csv (one row per task/seed/arm), search_trials.csv (one
row per result row, with its end time and front membership), search_summary.md (the table
printed: min / median / max over seeds) and a plot. Nothing else should run on the machine.
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

ARMS = ("slimtune", "plain-defaults", "plain-tuned")
#: Per task: model, training epochs, and the hypervolume's size reference in bytes (fixed before
#: running; the largest dense model of the space is 171,663 B on digits, 423,061 B on MNIST-1D).
TASKS = {"digits": {"model": "mlp", "epochs": 8, "size_ref": 200_000},
         "mnist1d": {"model": "cnn", "epochs": 10, "size_ref": 500_000}}
REF_ACCURACY = 0.0
FRACTIONS = (0.25, 0.5, 1.0)


def spec_dict(task: str, trials: int, seed: int, smoke: bool) -> dict:
    epochs = 2 if smoke else TASKS[task]["epochs"]
    return {
        "name": f"bench-{task}-{seed}",
        "task": {"dataset": task, "model": TASKS[task]["model"], "epochs": epochs},
        "objectives": {"accuracy": "max", "size_bytes": "min"},
        "space": {"lr": {"log_uniform": [1e-3, 3e-2]}, "batch_size": {"choice": [32, 64, 128]},
                  "depth": {"int": [1, 3]}, "width": {"choice": [16, 32, 64, 128]}},
        "compress": {"prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.3, 0.95]},
                               "finetune_epochs": 1 if smoke else 2},
                     "quantize": {"bits": {"choice": [32, 8, 4, 2]}}},
        "search": {"trials": trials, "concurrency": 2, "sampler": "tpe", "seed": seed},
    }


# --------------------------------------------------------------------------------- the arms
# Each returns (rows, wall seconds): one row per result row with columns t_end (seconds since
# the arm started), training (1.. in order of end), status, accuracy, test_accuracy, size_bytes.


def run_slimtune(raw: dict, out: Path, smoke: bool) -> tuple[pd.DataFrame, float]:
    from slimtune.search import run_sweep
    from slimtune.spaces import parse_spec

    es = {"grace_epochs": 1 if smoke else 2, "eta": 3}
    spec = parse_spec({**raw, "search": {**raw["search"], "ladder": 2 if smoke else 4, "early_stop": es}})
    t0 = time.time()
    df = run_sweep(spec, out, quiet=True)
    wall = time.time() - t0
    df = df[df["status"].isin(["ok", "stopped", "failed"])].copy()
    own = df["parent"].isna()
    df["t_end"] = df["ended_at"] - t0
    order = {n: i + 1 for i, n in enumerate(df.loc[own].sort_values("t_end")["trial_number"])}
    df["training"] = np.where(own, df["trial_number"], df["parent"])
    df["training"] = df["training"].map(order)
    return df[["t_end", "training", "status", "accuracy", "test_accuracy", "size_bytes"]], wall


def _plain_trial(config: dict, raw: dict, out_dir: str, data=None) -> None:
    """Both plain arms' trial: (load the data,) train, compress, measure, report."""
    from ray import tune

    from slimtune.search import prepare
    from slimtune.search.trial import TrialSetup, run_trial
    from slimtune.spaces import parse_spec

    spec = parse_spec(raw)
    if data is None:  # plain-defaults: each trial loads its data (the same split slimtune uses)
        data, _ = prepare(spec, Path(out_dir) / "unused")
    setup = TrialSetup(out_dir=out_dir, model=spec.task.model, kind=data.kind)
    run_trial(config, data, setup, report=tune.report)


def run_plain(raw: dict, out: Path, tuned: bool, time_budget_s: float | None = None,
              num_samples: int | None = None) -> tuple[pd.DataFrame, float]:
    """A plain arm: ``tune.Tuner`` + ``OptunaSearch`` over ``raw``'s space, running ``_plain_trial``.
    ``time_budget_s``: Tune stops the run then (trials still running end unfinished);
    ``num_samples``: trainings to ask for (default the spec's ``search.trials``)."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from slimtune.search import prepare
    from slimtune.search.driver.sweep import DefineByRun, make_sampler
    from slimtune.spaces import parse_spec

    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # per-epoch reports carry no objectives
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_spec(raw)
    t0 = time.time()
    if tuned:
        data, _ = prepare(spec, out / "unused")
        sampler = make_sampler(spec)
        trainable = tune.with_parameters(_plain_trial, raw=raw, out_dir=str(out), data=data)
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.search.seed)
        trainable = tune.with_parameters(_plain_trial, raw=raw, out_dir=str(out))
    searcher = OptunaSearch(space=DefineByRun(spec), metric=spec.metric_names, mode=spec.modes, sampler=sampler)
    config = tune.TuneConfig(search_alg=searcher, num_samples=num_samples or spec.search.trials,
                             max_concurrent_trials=spec.search.concurrency, time_budget_s=time_budget_s,
                             **({"reuse_actors": True} if tuned else {}))
    ended: dict[str, float] = {}

    class EndTimes(tune.Callback):
        """A trial's end time as the driver sees it (as slimtune's ``ended_at`` is taken)."""

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            ended[trial.trial_id] = time.time()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            ended[trial.trial_id] = time.time()

    grid = tune.Tuner(trainable, tune_config=config,
                      run_config=tune.RunConfig(storage_path=str(out / "ray"), name="plain", verbose=0,
                                                callbacks=[EndTimes()])).fit()
    wall = time.time() - t0
    rows = []
    for r in grid:
        m = r.metrics or {}
        final = m.get("phase") == "final"
        rows.append({"t_end": ended.get(m.get("trial_id"), wall + t0) - t0, "status": "ok" if final else "failed",
                     "epochs": (r.config or {}).get("epochs"),
                     **{k: m.get(k, np.nan) if final else np.nan for k in ("accuracy", "test_accuracy", "size_bytes")}})
    df = pd.DataFrame(rows).sort_values("t_end").reset_index(drop=True)
    df["training"] = np.arange(1, len(df) + 1)
    return df[["t_end", "training", "status", "accuracy", "test_accuracy", "size_bytes", "epochs"]], wall


# --------------------------------------------------------------------------- hypervolumes


def front_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows of ``df`` on the validation front (Pareto set of accuracy max, size min)."""
    from slimtune.search import pareto_front

    front = pareto_front(df, {"accuracy": "max", "size_bytes": "min"})
    return df.index.isin(front.index)


def test_hv(df: pd.DataFrame, size_ref: float) -> tuple[float, float]:
    """(hv_lin, hv_log) of (test accuracy, size) of the validation-chosen front of ``df``."""
    from slimtune.search import hypervolume

    ok = df[df["status"] == "ok"]
    if not len(ok):
        return 0.0, 0.0
    front = ok[front_mask(ok)]
    d = pd.DataFrame({"status": "ok", "test_accuracy": front["test_accuracy"].astype(float),
                      "lin": front["size_bytes"].astype(float) / size_ref,
                      "log": np.log10(front["size_bytes"].astype(float) / size_ref)})
    return tuple(hypervolume(d, {"test_accuracy": "max", col: "min"}, {"test_accuracy": REF_ACCURACY, col: 0.0 if
                                                                          col == "log" else 1.0})
                 for col in ("lin", "log"))


def measures(runs: dict[str, tuple[pd.DataFrame, float]], trials: int, size_ref: float) -> dict[str, dict]:
    """Per arm: hypervolumes per number of trainings and at equal wall-clock budgets."""
    budget = min(wall for _, wall in runs.values())
    out = {}
    for arm, (df, wall) in runs.items():
        m = {"wall_s": wall, "budget_T_s": budget, "trainings": int(df["training"].max()) if len(df) else 0,
             "rows": len(df), "failed": int((df["status"] == "failed").sum()),
             "stopped": int((df["status"] == "stopped").sum())}
        for k in sorted({max(1, trials // 4), max(1, trials // 2), trials}):
            m[f"hv_lin_k{k}"], m[f"hv_log_k{k}"] = test_hv(df[df["training"] <= k], size_ref)
        for f in FRACTIONS:
            m[f"hv_lin_T{f:g}"], m[f"hv_log_T{f:g}"] = test_hv(df[df["t_end"] <= f * budget + 1e-9], size_ref)
        out[arm] = m
    return out


# ------------------------------------------------------------------------------ reporting


def summary_table(runs: pd.DataFrame, trials: int) -> str:
    k = trials
    cols = ["hv_log_T1", "hv_lin_T1", "hv_log_T0.5", f"hv_log_k{k}", f"hv_lin_k{k}", "wall_s", "trainings"]
    head = ["task", "arm", "seeds"] + [
        c.replace("_T1", " @T").replace("_T0.5", " @T/2").replace(f"_k{k}", f" @{k} trainings") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, arm), g in runs.groupby(["task", "arm"], sort=False):
        cells = [task, arm, str(len(g))]
        for c in cols:
            v = g[c].to_numpy(dtype=float)
            fmt = "{:.1f}" if c == "wall_s" else "{:.0f}" if c == "trainings" else "{:.3f}"
            cells.append(" / ".join(fmt.format(x) for x in (v.min(), np.median(v), v.max())))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(trial_rows: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(trial_rows["task"]))
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7), squeeze=False)
    for j, task in enumerate(tasks):
        t = trial_rows[trial_rows["task"] == task]
        ref = TASKS[task]["size_ref"]
        for arm in ARMS:
            a = t[t["arm"] == arm]
            ks = np.arange(1, int(a["training"].max()) + 1) if len(a) else np.arange(1, 2)
            per_seed = [[test_hv(s[s["training"] <= k], ref)[1] for k in ks] for _, s in a.groupby("seed")]
            axes[0][j].plot(ks, np.median(per_seed, axis=0), label=arm)
            s0 = a[a["seed"] == a["seed"].min()]
            ts = np.linspace(0, float(s0["t_end"].max()) if len(s0) else 1.0, 60)
            axes[1][j].plot(ts, [test_hv(s0[s0["t_end"] <= x], ref)[1] for x in ts], label=arm)
        axes[0][j].set(title=task, xlabel="trainings", ylabel="test hv_log (median over seeds)")
        axes[1][j].set(xlabel="wall seconds (first seed)", ylabel="test hv_log")
        axes[0][j].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="trainings per sweep (default 20)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--smoke", action="store_true", help="1 seed, 3 trainings, 2 epochs; results *_smoke.*")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "search_benchmark.png"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.trials, args.seeds = 3, 1
    suffix = "_smoke" if args.smoke else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import ray

    from slimtune.search import prepare
    from slimtune.spaces import parse_spec

    cores = os.cpu_count() or 1
    started = time.time()
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.2f} before starting; other work is running and the "
              "wall times will not be clean (each row records the load)", file=sys.stderr)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    run_rows, trial_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            prepare(parse_spec(spec_dict(task, 1, 0, args.smoke)), Path(tmp) / "warm")  # MNIST-1D cache, untimed
            for seed in range(args.seeds):
                raw = spec_dict(task, args.trials, seed, args.smoke)
                order = [ARMS[(seed + i) % len(ARMS)] for i in range(len(ARMS))]
                runs, load = {}, {}
                for pos, arm in enumerate(order):
                    before = os.getloadavg()
                    where = Path(tmp) / f"{task}-{seed}-{arm}"
                    runs[arm] = (run_slimtune(raw, where, args.smoke) if arm == "slimtune"
                                 else run_plain(raw, where, tuned=arm == "plain-tuned"))
                    load[arm] = (pos, before, os.getloadavg())
                    print(f"{task} seed {seed} {arm}: {runs[arm][1]:.1f} s, {len(runs[arm][0])} rows, "
                          f"load {before[0]:.2f} -> {load[arm][2][0]:.2f}", flush=True)
                for arm, m in measures(runs, args.trials, TASKS[task]["size_ref"]).items():
                    pos, before, after = load[arm]
                    run_rows.append({"task": task, "seed": seed, "arm": arm, "position": pos, **m,
                                     "load1_start": before[0], "load5_start": before[1], "load1_end": after[0],
                                     "load5_end": after[1], "cores": cores, "size_ref_bytes": TASKS[task]["size_ref"]})
                    df = runs[arm][0]
                    ok = df[df["status"] == "ok"]
                    val_front = df.index.isin(ok.index[front_mask(ok)]) if len(ok) else False
                    trial_rows.append(df.assign(task=task, seed=seed, arm=arm, val_front=val_front))
    ray.shutdown()
    runs_df = pd.DataFrame(run_rows)
    trials_df = pd.concat(trial_rows, ignore_index=True)
    runs_df.to_csv(out / f"search_runs{suffix}.csv", index=False)
    trials_df.to_csv(out / f"search_trials{suffix}.csv", index=False)
    note = (f"{args.trials} trainings per sweep, seeds 0-{args.seeds - 1}, {cores} cores; min / median / max over "
            f"seeds. hv_* = hypervolume of (test accuracy, size) of the validation-chosen front; reference point "
            f"accuracy {REF_ACCURACY:g} and size " + ", ".join(f"{t} {TASKS[t]['size_ref']:,} B" for t in args.tasks) +
            ". hv_log (accuracy x decades below the reference size) rewards small models and carries the claims "
            "about them; hv_lin (accuracy x fraction of the reference size saved) is dominated by large accurate "
            "models. T = the shortest arm's total wall time on that task and seed (equal wall-clock budget).")
    table = summary_table(runs_df, args.trials)
    (out / f"search_summary{suffix}.md").write_text(table + "\n\n" + note + "\n")
    note += (f" Total {time.time() - started:.0f} s; 1-min load average at the arms' starts "
             f"{runs_df['load1_start'].min():.2f}-{runs_df['load1_start'].max():.2f}, at their ends "
             f"{runs_df['load1_end'].min():.2f}-{runs_df['load1_end'].max():.2f} (idle 2-core machine: about 2 while "
             "an arm runs).")
    print("\n" + table + "\n\n" + note)
    if not args.smoke or args.plot != ap.get_default("plot"):
        plot(trials_df, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
