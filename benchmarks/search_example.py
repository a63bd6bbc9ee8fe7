"""The searcher alone: slimtune vs tuned plain Ray Tune + OptunaSearch on the MNIST-1D example, equal wall-clock.

Both arms run the same trial function (``search.trial.run_trial``: train, compress as the
configuration says, measure, store the artifact) over the same space: every training and
compression option of ``examples/mnist1d.yaml`` (WSD schedule, weight decay, width/depth,
pruning, 4/5/6-bit per-channel quantization with an 8-bit first layer, manual or
sensitivity-placed bits, PTQ or QAT), on the same data split, with the same trial seeds. Only
the searching differs:

* ``slimtune``     — ``run_sweep`` on the example as shipped: 60 new configurations at 30 epochs,
  the best third for their size retrained at 120 (promotion), 3 more compression settings per
  trained model aimed at the front's gaps (ladder), size prediction skipping configurations far
  above the 3,500-byte constraint.
* ``plain-tuned``  — what an expert writes with Tune + Optuna (benchmarks/search.py ``run_plain``,
  tuned): ``OptunaSearch`` over the same define-by-run space with slimtune's sampler settings
  (multivariate TPE, same start-up trials, same seed), ``reuse_actors=True``, the data built once
  and sent with ``tune.with_parameters``, ``max_concurrent_trials`` = 2. The two epoch budgets
  become a searched parameter (``epochs: {choice: [30, 120]}``), since Tune's schedulers rank
  one metric and cannot promote by a two-objective front. Plain Tune has no ladder and no
  constraint handling (OptunaSearch passes no constraints to the sampler), so it trains every
  configuration it samples. It runs with ``time_budget_s`` = slimtune's wall time on the same
  seed and as many trainings as fit.

Measured per seed (Ray started once beforehand, not counted; data building counted): at equal
wall-clock budgets (fractions 0.25, 0.5, 1 of T, the shorter arm's total on that seed), the
hypervolume of the validation-chosen front (rows ending by then) re-scored on test:
``hv_log`` = accuracy x log10(3,500 / size) (accuracy x decades below the constraint; rows above
3,500 B add nothing); and, for each bound of 1, 2, 3 KB, the test accuracy of the row with the
best validation accuracy within it.

    python benchmarks/search_example.py                  # seeds 0 1 2 (about 20 min a seed on 2 idle cores)
    python benchmarks/search_example.py --quick --seeds 0  # a few short trainings: checks it runs

Writes benchmarks/results/search_example_runs.csv (one row per seed and arm),
search_example_rows.csv (every result row with its end time) and search_example.md (the table).
Nothing else should run on the machine: the load average at each arm's start and end is recorded.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "examples" / "mnist1d.yaml"
RESULTS = ROOT / "benchmarks" / "results"
SIZE_REF = 3500  # the example's size constraint: the hypervolume's reference size
BOUNDS = (1000, 2000, 3000)
FRACTIONS = (0.25, 0.5, 1.0)
ARMS = ("slimtune", "plain-tuned")


def _script(name: str):
    """benchmarks/<name>.py, loaded under its own name (``search`` is also the library's)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench():
    """benchmarks/search.py: the arms and the hypervolume."""
    return _script("search")


def slimtune_spec(seed: int, quick: bool) -> dict:
    raw = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    raw["search"]["seed"] = seed
    if quick:
        raw["search"].update(trials=4, ladder=1)
        raw["search"]["promote"]["rungs"] = [3, 5]
        raw["compress"]["prune"]["finetune_epochs"] = 1
        raw["compress"]["quantize"]["qat_epochs"] = 1
    return raw


def plain_spec(raw: dict) -> dict:
    """The same space for plain Tune: the promotion rungs become a searched epoch budget; no ladder."""
    plain = copy.deepcopy(raw)
    rungs = plain["search"].pop("promote")["rungs"]
    plain["search"].pop("ladder", None)
    plain["task"]["epochs"] = {"choice": list(rungs)}
    return plain


def run_slimtune(raw: dict, out: Path) -> tuple[pd.DataFrame, float]:
    from slimtune.search import run_sweep
    from slimtune.spaces import parse_spec

    t0 = time.time()
    df = run_sweep(parse_spec(raw), out, base_dir=EXAMPLE.parent, quiet=True)
    wall = time.time() - t0
    df = df[df["status"].isin(["ok", "stopped", "failed"])].copy()
    df["t_end"] = df["ended_at"] - t0
    return df[["t_end", "status", "accuracy", "test_accuracy", "size_bytes", "epochs", "parent"]], wall


def measure(bench, df: pd.DataFrame, wall: float, budget: float) -> dict:
    m = {"wall_s": round(wall, 1), "T_s": round(budget, 1), "rows": len(df),
         "trainings": int((df["parent"].isna() & df["status"].isin(["ok", "stopped"])).sum()),
         "ok_rows_at_T": int(((df["status"] == "ok") & (df["t_end"] <= budget)).sum()),
         "unfinished": int((df["status"] != "ok").sum())}
    for f in FRACTIONS:
        m[f"hv_log_T{f:g}"] = bench.test_hv(df[df["t_end"] <= f * budget + 1e-9], SIZE_REF)[1]
    at_t = df[df["t_end"] <= budget + 1e-9].assign(feasible=lambda d: d["size_bytes"] <= SIZE_REF)
    pick = _script("mnist1d_gate").pick  # the gate's rule: best validation within the bound
    for bound in BOUNDS:
        r = pick(at_t, bound)
        m[f"test_le{bound}"] = np.nan if r is None else float(r["test_accuracy"])
        m[f"bytes_le{bound}"] = np.nan if r is None else int(r["size_bytes"])
    return m


def run_seed(bench, seed: int, quick: bool, tmp: Path) -> tuple[list[dict], list[pd.DataFrame]]:
    raw = slimtune_spec(seed, quick)
    runs, load = {}, {}
    for arm in ARMS:  # slimtune first: its wall time is plain Tune's budget
        before = os.getloadavg()
        where = tmp / f"{seed}-{arm}"
        if arm == "slimtune":
            runs[arm] = run_slimtune(raw, where)
        else:
            df, wall = bench.run_plain(plain_spec(raw), where, tuned=True, time_budget_s=runs["slimtune"][1],
                                       num_samples=10_000)
            runs[arm] = (df.assign(parent=np.nan), wall)
        load[arm] = (before[0], os.getloadavg()[0])
        print(f"seed {seed} {arm}: {runs[arm][1]:.1f} s, {len(runs[arm][0])} rows, "
              f"load {load[arm][0]:.2f} -> {load[arm][1]:.2f}", flush=True)
    budget = min(wall for _, wall in runs.values())
    out_rows, frames = [], []
    for arm, (df, wall) in runs.items():
        out_rows.append({"seed": seed, "arm": arm, **measure(bench, df, wall, budget),
                         "load_start": load[arm][0], "load_end": load[arm][1]})
        frames.append(df.assign(seed=seed, arm=arm))
    return out_rows, frames


def spread(v: pd.Series, fmt: str) -> str:
    v = v.dropna().astype(float)
    if v.empty:
        return "-"
    return f"{fmt.format(v.median())} ({fmt.format(v.min())}-{fmt.format(v.max())})"


def table(runs: pd.DataFrame) -> str:
    cols = [("hv_log_T1", "hv_log @T", "{:.3f}"), ("hv_log_T0.5", "hv_log @T/2", "{:.3f}"),
            ("hv_log_T0.25", "hv_log @T/4", "{:.3f}"), ("test_le1000", "test <=1 KB", "{:.3f}"),
            ("test_le2000", "test <=2 KB", "{:.3f}"), ("test_le3000", "test <=3 KB", "{:.3f}"),
            ("trainings", "trainings", "{:.0f}"), ("rows", "rows", "{:.0f}"), ("wall_s", "wall s", "{:.0f}")]
    lines = ["| arm | seeds | " + " | ".join(c[1] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm, g in runs.groupby("arm", sort=False):
        lines.append(f"| {arm} | {len(g)} | " + " | ".join(spread(g[c], f) for c, _, f in cols) + " |")
    per_seed = ["", "| seed | arm | hv_log @T | test <=1/2/3 KB | trainings | wall s | load start->end |",
                "|---|---|---|---|---|---|---|"]
    for _, r in runs.iterrows():
        accs = " / ".join("-" if pd.isna(r[f"test_le{b}"]) else f"{r[f'test_le{b}']:.3f}" for b in BOUNDS)
        per_seed.append(f"| {r['seed']} | {r['arm']} | {r['hv_log_T1']:.3f} | {accs} | {r['trainings']} | "
                        f"{r['wall_s']:.0f} | {r['load_start']:.1f}->{r['load_end']:.1f} |")
    return "\n".join(lines + per_seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="a few short trainings; results *_quick.*")
    args = ap.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    import ray

    from slimtune.search import prepare
    from slimtune.spaces import parse_spec

    bench = _bench()
    started = time.time()
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.2f} before starting", file=sys.stderr)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows, frames = [], []
    with tempfile.TemporaryDirectory() as tmp:
        prepare(parse_spec(slimtune_spec(0, True)), Path(tmp) / "warm")  # the MNIST-1D cache, untimed
        for seed in args.seeds:
            r, f = run_seed(bench, seed, args.quick, Path(tmp))
            rows += r
            frames += f
            RESULTS.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(RESULTS / f"search_example_runs{suffix}.csv", index=False)
            pd.concat(frames, ignore_index=True).to_csv(RESULTS / f"search_example_rows{suffix}.csv", index=False)
    ray.shutdown()
    runs = pd.DataFrame(rows)
    total = time.time() - started
    note = (f"examples/mnist1d.yaml, seeds {', '.join(map(str, args.seeds))}, {os.cpu_count()} cores; median "
            f"(min-max) over seeds. hv_log = hypervolume of (test accuracy, log10 size) of the validation-chosen "
            f"front, reference accuracy 0 and {SIZE_REF:,} B; T = the shorter arm's wall time on that seed (plain "
            f"Tune runs with time_budget_s = slimtune's wall time). test <=N KB: test accuracy of the row with the "
            f"best validation accuracy within N,000 B among the rows finished by T. Total compute: "
            f"{total:.0f} s wall on "
            f"2 cores (at most {2 * total:.0f} CPU-s).")
    text = table(runs) + "\n\n" + note + "\n"
    (RESULTS / f"search_example{suffix}.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
