"""Issue 13's gate: the shipped MNIST-1D example's front at 1, 2 and 3 KB, over seeds.

For each seed (``search.seed``) it runs ``examples/mnist1d.yaml`` as ``slimtune sweep`` does
(``run_sweep``, Ray started for the sweep and counted in the wall time), then, for each size
bound (1,000 / 2,000 / 3,000 bytes: KB = 1,000 B), picks the finished feasible row with the best
*validation* accuracy within it (ties: the smaller file) and reports its *test* accuracy. Every
front row is checked: the artifact file's length equals ``size_bytes``, and ``compress.load`` of
it, evaluated on the test split, gives the row's ``test_accuracy``.

The hand-written reference (benchmarks/handwritten.py, read from results/handwritten.csv) is put
in the same table by its own byte count (no container).

    python benchmarks/mnist1d_gate.py                          # seeds 0 1 2, the example as shipped
    python benchmarks/mnist1d_gate.py --seeds 0 --quick        # a few short trials: checks it runs
    python benchmarks/mnist1d_gate.py --seeds 0 --trials 20    # fewer trials than the example's

Writes benchmarks/results/mnist1d_gate.csv (one row per seed and bound), mnist1d_gate_front.csv
(one row per front row and its reload check) and mnist1d_gate.md (the table); with ``--quick`` or
``--trials N`` the names end in ``_quick`` or ``_trialsN``. Nothing else should run on the machine (the load average at
the start and end of each sweep is recorded).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOUNDS = (1000, 2000, 3000)
TARGETS = {3000: 0.92, 2000: 0.90}  # the gate: median test accuracy at <= 3 KB and <= 2 KB
RESULTS = ROOT / "benchmarks" / "results"


def spec_for(path: Path, seed: int, trials: int | None, quick: bool) -> dict:
    raw = copy.deepcopy(yaml.safe_load(path.read_text()))
    raw["search"]["seed"] = seed
    if quick:  # a few short trainings: shows the script works, says nothing about the gate
        if "promote" in raw["search"]:  # the rungs set the epochs
            raw["search"]["promote"]["rungs"] = [3, 5]
        else:
            raw["task"]["epochs"] = 5
        raw["search"]["trials"] = 4
        raw["search"]["ladder"] = min(raw["search"].get("ladder", 0), 1)
        for section, key in (("prune", "finetune_epochs"), ("quantize", "qat_epochs")):
            if key in raw.get("compress", {}).get(section, {}):
                raw["compress"][section][key] = 1
    if trials is not None:
        raw["search"]["trials"] = trials
    return raw


def pick(df: pd.DataFrame, bound: int) -> pd.Series | None:
    """The feasible finished row with the best validation accuracy at ``size_bytes <= bound``."""
    ok = df[(df["status"] == "ok") & df["feasible"].fillna(False).astype(bool) & (df["size_bytes"] <= bound)]
    if ok.empty:
        return None
    return ok.sort_values(["accuracy", "size_bytes"], ascending=[False, True]).iloc[0]


def check_front(df: pd.DataFrame, out: Path, data) -> pd.DataFrame:
    """Each front row reloaded from its artifact: file length and test accuracy against the row."""
    from slimtune import compress
    from slimtune.search import evaluate, pareto_front

    rows = []
    for _, r in pareto_front(df).iterrows():
        path = out / r["artifact"]
        model = compress.load(path)
        test = evaluate(model, data.x_test, data.y_test, data.kind)["accuracy"]
        rows.append({"trial_number": int(r["trial_number"]), "parent": r["parent"], "accuracy": r["accuracy"],
                     "test_accuracy": r["test_accuracy"], "reloaded_test_accuracy": test,
                     "size_bytes": int(r["size_bytes"]), "file_bytes": path.stat().st_size,
                     "accuracy_ok": abs(test - r["test_accuracy"]) < 1e-9,
                     "bytes_ok": path.stat().st_size == int(r["size_bytes"])})
    return pd.DataFrame(rows)


def describe(r: pd.Series) -> str:
    """A short name of a row's configuration, e.g. ``w12 d3 e200 8b``."""
    parts = [f"w{r['width']}", f"d{r['depth']}", f"e{r['epochs']}"]
    if r.get("prune_method") not in (None, "none") and r.get("prune_method") == r.get("prune_method"):
        parts.append(f"{r['prune_method'][:3]}{float(r['sparsity']):.2f}")
    parts.append(f"{r['bits']}b" + (" qat" if r.get("quant_mode") == "qat" else ""))
    return " ".join(parts)


def run_seed(spec_path: Path, seed: int, trials: int | None, quick: bool, out: Path) -> tuple[list, pd.DataFrame]:
    from slimtune.search import load_data, load_results, run_sweep
    from slimtune.spaces import parse_spec

    raw = spec_for(spec_path, seed, trials, quick)
    spec = parse_spec(raw)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    run_sweep(spec, out, base_dir=spec_path.parent, quiet=True)
    wall = time.time() - t0
    load1 = os.getloadavg()[0]
    df = load_results(out)
    data = load_data(spec.task)
    front = check_front(df, out, data).assign(seed=seed)
    trained = int((df["parent"].isna() & df["status"].isin(["ok", "stopped", "failed"])).sum())
    rows = []
    for bound in BOUNDS:
        r = pick(df, bound)
        rows.append({"seed": seed, "bound_bytes": bound, "wall_s": round(wall, 1), "trials": spec.search.trials,
                     "trainings": trained, "rows": len(df), "load_start": load0, "load_end": load1,
                     "val_accuracy": None if r is None else float(r["accuracy"]),
                     "test_accuracy": None if r is None else float(r["test_accuracy"]),
                     "size_bytes": None if r is None else int(r["size_bytes"]),
                     "config": None if r is None else describe(r)})
    return rows, front


def reference() -> pd.DataFrame:
    path = RESULTS / "handwritten.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def spread(v: pd.Series, fmt: str) -> str:
    v = v.dropna()
    if v.empty:
        return "-"
    return f"{fmt.format(v.median())} ({fmt.format(v.min())}–{fmt.format(v.max())})"


def table(rows: pd.DataFrame, front: pd.DataFrame, ref: pd.DataFrame) -> str:
    lines = ["| model | bound | seeds | test accuracy: median (min–max) | validation accuracy | bytes | wall s |",
             "|---|---|---|---|---|---|---|"]
    for bound in BOUNDS:
        b = rows[rows["bound_bytes"] == bound]
        target = f" (gate {TARGETS[bound]:.0%})" if bound in TARGETS else ""
        lines.append(f"| slimtune front, best validation | ≤ {bound:,} B{target} | {len(b)} | "
                     f"{spread(b['test_accuracy'], '{:.3f}')} | {spread(b['val_accuracy'], '{:.3f}')} | "
                     f"{spread(b['size_bytes'], '{:,.0f}')} | {spread(b['wall_s'], '{:.0f}')} |")
    for (width, bits), g in (ref.groupby(["width", "bits"]) if len(ref) else []):
        lines.append(f"| hand-written CNN w{width} {bits}-bit, {g['epochs'].iloc[0]} epochs "
                     f"(own count, no container) | "
                     f"{g['bytes'].iloc[0]:,} B | {len(g)} | {spread(g['test_accuracy'], '{:.3f}')} | "
                     f"{spread(g['val_accuracy'], '{:.3f}')} | {g['bytes'].iloc[0]:,} | "
                     f"{spread(g['train_seconds'], '{:.0f}')} |")
    per_seed = rows.drop_duplicates("seed")
    checks = (f"Front rows reloaded with `compress.load` and re-evaluated on the test split: "
              f"{int(front['accuracy_ok'].sum())}/{len(front)} reproduce the row's test accuracy, "
              f"{int(front['bytes_ok'].sum())}/{len(front)} have file length = size_bytes.")
    runs = "; ".join(f"seed {r.seed}: {r.trainings} trainings, {r.rows} rows, {r.wall_s:.0f} s, "
                     f"load {r.load_start:.1f}→{r.load_end:.1f}" for r in per_seed.itertuples())
    picks = "; ".join(f"seed {r.seed} ≤{r.bound_bytes}: {r.config}" for r in rows.itertuples()
                      if isinstance(r.config, str))
    return "\n".join(lines) + "\n\n" + checks + "\n\nSweeps: " + runs + ".\n\nPicked: " + picks + ".\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "mnist1d.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=None, help="override search.trials")
    ap.add_argument("--quick", action="store_true", help="4 trials of 5 epochs: checks the script, not the gate")
    ap.add_argument("--keep", default=None, help="folder to keep the sweeps in (default: a temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    suffix = "_quick" if args.quick else f"_trials{args.trials}" if args.trials else ""
    all_rows, fronts = [], []
    with tempfile.TemporaryDirectory(prefix="mnist1d_gate_") as tmp:
        base = Path(args.keep or tmp)
        for seed in args.seeds:
            rows, front = run_seed(Path(args.spec), seed, args.trials, args.quick, base / f"seed{seed}")
            all_rows += rows
            fronts.append(front)
            print(pd.DataFrame(rows).to_string(index=False), flush=True)
    rows, front = pd.DataFrame(all_rows), pd.concat(fronts, ignore_index=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows.to_csv(RESULTS / f"mnist1d_gate{suffix}.csv", index=False)
    front.to_csv(RESULTS / f"mnist1d_gate_front{suffix}.csv", index=False)
    md = table(rows, front, reference())
    (RESULTS / f"mnist1d_gate{suffix}.md").write_text(md)
    print(md)
    return 0 if bool(front["accuracy_ok"].all() and front["bytes_ok"].all()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
