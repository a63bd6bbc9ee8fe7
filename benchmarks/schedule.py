"""Learning-rate schedule benchmark: constant against WSD (warm-up, stable, decay) on MNIST-1D.

    python benchmarks/schedule.py                       # 2 seeds, lr 0.01 and 0.03, constant + wsd, 60 epochs
    python benchmarks/schedule.py --seeds 3 --lr 0.003 0.01 0.03 --arms constant wsd cosine
    python benchmarks/schedule.py --smoke               # 1 seed, 2 epochs: checks it runs

One fixed small model, the 1-D CNN of width 12 and depth 3 (``compress.build_model``), Adam at
each peak learning rate of ``--lr`` in every arm, trained for ``--epochs`` on MNIST-1D's training split
(the validation split held out) through ``search.train`` with ``schedule=``. Each dense model
is then quantized to 4 bits (per channel) three ways: post-training (PTQ), QAT fine-tuning
for ``--qat-epochs`` at the constant training rate (what a trial did before schedules), and
QAT whose rate decays over its epochs (``Schedule.finetune``, what a trial with a schedule
does now). Reports validation and test accuracy per seed, the median over seeds for each arm
and rate, and each arm at its best rate by median validation accuracy; and the wall time. The
data split is the same for every seed; the seed sets initialisation and order.

Writes benchmarks/results/schedule.csv (one row per arm and seed).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's search/, not benchmarks/search.py

from slimtune import compress, search, spaces
from slimtune.search.task.train import Schedule

ARMS = {"constant": Schedule(), "wsd": Schedule("wsd", 0.05, 0.2), "cosine": Schedule("cosine", 0.05, 0.0)}
RESULTS = Path(__file__).parent / "results"


def run_one(arm: str, lr: float, seed: int, data, args) -> dict:
    recipe = {"arch": "cnn", "input_shape": data.input_shape, "output_dim": data.n_outputs,
              "depth": args.depth, "width": args.width}
    torch.manual_seed(seed)
    dense = compress.build_model(recipe)
    schedule = ARMS[arm]
    targs = {"lr": lr, "batch_size": args.batch_size}
    t0 = time.perf_counter()
    search.train(dense, data, search.Fit(epochs=args.epochs, seed=seed, schedule=schedule, **targs))
    seconds = time.perf_counter() - t0
    row = {"arm": arm, "lr": lr, "seed": seed, "epochs": args.epochs, "train_seconds": round(seconds, 1)}

    def score(tag: str, model: torch.nn.Module) -> None:
        row[f"val_{tag}"] = search.evaluate(model, data.x_val, data.y_val, data.kind)["accuracy"]
        row[f"test_{tag}"] = search.evaluate(model, data.x_test, data.y_test, data.kind)["accuracy"]

    score("dense", dense)
    quant = compress.AffineQuantize(bits=args.bits, per_channel=True)
    score("ptq", compress.compress(dense, quant))
    fake = compress.FakeQuantize(bits=args.bits, per_channel=True)
    for tag, ft in (("qat_const", Schedule()), ("qat_decay", Schedule("wsd").finetune())):
        qat = compress.compress(dense, fake)
        search.train(qat, data, search.Fit(epochs=args.qat_epochs, seed=seed + 2, schedule=ft, **targs))
        score(tag, compress.compress(qat, quant))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--arms", nargs="+", default=["constant", "wsd"], choices=list(ARMS))
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-2, 3e-2], help="peak learning rates")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=12)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="1 seed, 2 epochs, 1 QAT epoch")
    ap.add_argument("--out", default=str(RESULTS / "schedule.csv"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.qat_epochs = 1, 2, 1
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = search.load_data(spaces.Task(dataset="mnist1d", model="cnn", epochs=spaces.Fixed(1)), seed=0)
    rows = [run_one(arm, lr, seed, data, args) for lr in args.lr for seed in range(args.seeds) for arm in args.arms]
    wall = time.perf_counter() - t0
    cols = ["arm", "lr", "seed", "epochs", "val_dense", "test_dense", "test_ptq", "test_qat_const", "test_qat_decay",
            "train_seconds"]
    print(f"MNIST-1D, CNN width {args.width} depth {args.depth}, Adam, batch {args.batch_size}, "
          f"{args.epochs} epochs; {args.bits}-bit per-channel PTQ / QAT {args.qat_epochs} epochs "
          f"(load average at start {os.getloadavg()[0]:.1f}, wall {wall:.0f} s)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) and c not in ("train_seconds", "lr")
                                else f"{r[c]:g}" if c == "lr" else str(r[c]) for c in cols) + " |")
    print("\nmedian over seeds:")
    best: dict[str, tuple[float, str]] = {}
    for arm in args.arms:
        for lr in args.lr:
            mine = [r for r in rows if r["arm"] == arm and r["lr"] == lr]
            med = {c: statistics.median(r[c] for r in mine) for c in cols[4:9]}
            line = f"  {arm:9s} lr {lr:<6g} " + "  ".join(f"{c}={v:.3f}" for c, v in med.items())
            print(line)
            best[arm] = max(best.get(arm, (-1.0, "")), (med["val_dense"], line))
    print("\neach arm at its best rate (by median validation accuracy):")
    for arm in args.arms:
        print(best[arm][1])
    if not args.smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
