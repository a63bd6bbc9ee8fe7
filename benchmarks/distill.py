"""Distillation benchmark: compressed students fine-tuned from the labels alone against with a teacher.

    python benchmarks/distill.py                        # 3 seeds, widths 12 and 16, weights 0 / 0.5 / 0.9
    python benchmarks/distill.py --seeds 2 --teacher-epochs 40 --epochs 20
    python benchmarks/distill.py --smoke                # 1 seed, 2 epochs: checks it runs

On MNIST-1D, per seed: a teacher (1-D CNN width 32, depth 3) trained ``--teacher-epochs`` with
WSD (warm-up 5 %, decay over the last 20 %) at ``--lr``, weight decay ``--wd``; and for each
student width (``--widths``) one dense student (depth 3) trained ``--epochs`` the same way.
Each dense student is then compressed exactly as a sweep's trial does
(``search.trial.compress_trained`` and ``measure``: the artifact is written, its length is the
size), two ways:

  qat4       4-bit per-channel QAT for ``--ft-epochs``, then 4-bit quantization
  prune+ptq4 magnitude pruning to 50 % (global), fine-tuning for ``--ft-epochs``, then 4-bit PTQ

each with ``compress.distill`` weight 0 (labels only), 0.5 and 0.9 at temperature 2 (the
fine-tuning and QAT loss mix, ``search.task.train.Distill``); fine-tuning decays its rate over
its own epochs as in a trial with a schedule. The data split is the same for every seed; the seed
sets initialisation and batch order (the teacher's, the student's and each phase's).
Test accuracy is on the held-out test split. Writes benchmarks/results/distill.csv (one row per
seed, width, method and weight) and distill.md (the table printed: min / median / max over seeds).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's search/, not benchmarks/search.py

import torch  # noqa: E402

from slimtune import compress  # noqa: E402
from slimtune.search.task.data import load_data  # noqa: E402
from slimtune.search.task.train import Distill, Fit, Schedule, evaluate, train  # noqa: E402
from slimtune.search.trial import Trained, TrialSetup, compress_trained, measure, model_recipe  # noqa: E402
from slimtune.spaces import parse_spec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WSD = {"lr_schedule": "wsd", "warmup": 0.05, "decay": 0.2}
METHODS = {
    "qat4": {"prune_method": "none", "bits": 4, "quant_mode": "qat"},
    "prune+ptq4": {"prune_method": "magnitude", "sparsity": 0.5, "scope": "global", "bits": 4, "quant_mode": "ptq"},
}


def trained_cnn(data, width: int, seed: int, epochs: int, args) -> tuple[torch.nn.Module, dict, Fit]:
    """A dense CNN of ``width`` (depth 3) trained ``epochs`` with WSD; its recipe and fit."""
    recipe = model_recipe(TrialSetup(out_dir="", model="cnn", kind=data.kind), data, {"depth": 3, "width": width})
    torch.manual_seed(seed)
    model = compress.build_model(recipe)
    fit = Fit(lr=args.lr, batch_size=args.batch_size, epochs=epochs, seed=seed, weight_decay=args.wd,
              schedule=Schedule("wsd", WSD["warmup"], WSD["decay"]))
    train(model, data, fit)
    return model, recipe, fit


def run_seed(data, seed: int, args, out_dir: str) -> list[dict]:
    t0 = time.perf_counter()
    teacher, _, _ = trained_cnn(data, 32, seed, args.teacher_epochs, args)
    teacher_test = evaluate(teacher, data.x_test, data.y_test, data.kind)["accuracy"]
    print(f"seed {seed}: teacher test {teacher_test:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    rows = []
    for width in args.widths:
        dense, recipe, fit = trained_cnn(data, width, seed, args.epochs, args)
        dense_test = evaluate(dense, data.x_test, data.y_test, data.kind)["accuracy"]
        for method, fields in METHODS.items():
            for weight in args.weights:
                config = {"seed": seed, "per_channel": True, "symmetric": False, "finetune_epochs": args.ft_epochs,
                          "qat_epochs": args.ft_epochs, **WSD, **fields}
                distill = Distill(teacher, weight, args.temperature) if weight > 0 else None
                t1 = time.perf_counter()
                small, _ = compress_trained(dense, config, data, replace(fit, distill=distill))
                m = measure(small, Trained(dense, recipe, data), TrialSetup(out_dir=out_dir, model="cnn",
                                                                            kind=data.kind), f"s{seed}-{len(rows)}")
                rows.append({"seed": seed, "width": width, "method": method, "distill_weight": weight,
                             "temperature": args.temperature, "test_accuracy": round(m["test_accuracy"], 4),
                             "val_accuracy": round(m["accuracy"], 4), "size_bytes": m["size_bytes"],
                             "student_dense_test": round(dense_test, 4), "teacher_test": round(teacher_test, 4),
                             "compress_seconds": round(time.perf_counter() - t1, 1)})
                print(f"seed {seed} width {width} {method:10s} w={weight:<4g} test {m['test_accuracy']:.4f} "
                      f"{m['size_bytes']} B", file=sys.stderr)
    return rows


def table(rows: list[dict], args, wall: float) -> str:
    lines = [f"MNIST-1D; teacher CNN width 32 depth 3, {args.teacher_epochs} epochs WSD lr {args.lr:g} wd {args.wd:g}; "
             f"students depth 3, {args.epochs} epochs, then {args.ft_epochs} epochs of QAT / pruned fine-tuning; "
             f"temperature {args.temperature:g}; {args.seeds} seeds; wall {wall:.0f} s "
             f"(load average at start {LOAD:.1f}, nice 19)", "",
             "Teacher test accuracy per seed: " + ", ".join(
                 f"{statistics.median([r['teacher_test'] for r in rows if r['seed'] == s]):.4f}"
                 for s in range(args.seeds)), "",
             "| width | method | distill weight | test accuracy min / median / max | paired vs weight 0: median "
             "difference, seeds better/worse | dense student (median) | bytes |",
             "|---|---|---|---|---|---|---|"]
    for width in args.widths:
        for method in METHODS:
            base = {r["seed"]: r["test_accuracy"] for r in rows
                    if (r["width"], r["method"], r["distill_weight"]) == (width, method, 0.0)}
            for weight in args.weights:
                sel = [r for r in rows if (r["width"], r["method"], r["distill_weight"]) == (width, method, weight)]
                acc = [r["test_accuracy"] for r in sel]
                diff = [r["test_accuracy"] - base[r["seed"]] for r in sel if r["seed"] in base]
                paired = (f"{statistics.median(diff):+.4f}, {sum(d > 0 for d in diff)}/{sum(d < 0 for d in diff)}"
                          if diff and weight > 0 else "")
                dense = statistics.median(r["student_dense_test"] for r in sel)
                lines.append(f"| {width} | {method} | {weight:g} | {min(acc):.4f} / {statistics.median(acc):.4f} / "
                             f"{max(acc):.4f} | {paired} | {dense:.4f} | "
                             f"{statistics.median(r['size_bytes'] for r in sel):.0f} |")
    return "\n".join(lines)


LOAD = os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--widths", type=int, nargs="+", default=[12, 16])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--teacher-epochs", type=int, default=60)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ft-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--wd", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="1 seed, 2 epochs each: checks it runs (writes nothing)")
    p.add_argument("--out", default=str(RESULTS / "distill"), help="path stem of the .csv and .md written")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.teacher_epochs, args.epochs, args.ft_epochs, args.widths = 1, 2, 2, 1, args.widths[:1]
    torch.set_num_threads(1)
    data = load_data(parse_spec({"name": "distill", "task": {"dataset": "mnist1d", "model": "cnn"}}).task)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for seed in range(args.seeds) for r in run_seed(data, seed, args, tmp)]
    text = table(rows, args, time.perf_counter() - t0)
    print(text)
    if not args.smoke:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.with_suffix(".csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        out.with_suffix(".md").write_text(f"# Distillation benchmark (`python benchmarks/distill.py`)\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
