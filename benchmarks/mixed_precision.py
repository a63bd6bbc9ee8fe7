"""Mixed-precision benchmark: uniform bit widths against first/last layer apart and against the
sensitivity assignment at the same average width, on one trained model per seed.

    python benchmarks/mixed_precision.py                 # mnist1d CNN, 3 seeds, PTQ (about 1.5 min)
    python benchmarks/mixed_precision.py --qat 2         # QAT fine-tuning (2 epochs) before quantizing
    python benchmarks/mixed_precision.py --dataset digits --model mlp --seeds 5 --epochs 30

Per seed one model is trained (Adam, constant rate), then compressed by each arm exactly as a
sweep's trial does (`search.trial.compress_trained` and `measure`: the artifact is written, its
length is the size).  Arms, for each rest width k:

  uniform-k        every layer at k bits
  first/last8-k    first and last layer at 8 bits, the rest at k
  sens=uniform-k   widths placed by sensitivity, average <= that of uniform-k (same bytes)
  sens=first/last8-k  the same at the average of first/last8-k

Sensitivity: KL divergence of the class probabilities on 256 training rows when only that
layer is quantized; the widths with the least summed sensitivity within the budget
(`compress.assign_bits`).  Test accuracy is on the held-out test split; avg_bits is the mean
width over all weights (bits per weight).  Writes
benchmarks/results/mixed_precision_<dataset>_<model>_<ptq|qat>.csv (one row per seed and arm)
and prints median [min, max] over seeds.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slimtune import compress  # noqa: E402
from slimtune.search.task.data import load_data  # noqa: E402
from slimtune.search.task.train import Fit, train  # noqa: E402
from slimtune.search.trial import Trained, compress_trained, measure  # noqa: E402
from slimtune.spaces import parse_spec  # noqa: E402


def arms(rests: list[int]) -> dict[str, dict]:
    out: dict[str, dict] = {"fp32": {}}
    for k in rests:
        out[f"uniform-{k}"] = {"bits": k}
        out[f"first/last8-{k}"] = {"bits": k, "bits_first": 8, "bits_last": 8}
        out[f"sens=uniform-{k}"] = {"bits": k, "bits_assign": "sensitivity"}
        out[f"sens=first/last8-{k}"] = {"bits": k, "bits_first": 8, "bits_last": 8, "bits_assign": "sensitivity"}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist1d", choices=("mnist1d", "digits"))
    p.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rest", type=int, nargs="+", default=[2, 3, 4], help="widths of the other layers")
    p.add_argument("--qat", type=int, default=0, help="QAT epochs before quantizing (0: PTQ)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out",
                   help="CSV path (default: benchmarks/results/mixed_precision_<dataset>_<model>_<ptq|qat>.csv)")
    args = p.parse_args(argv)
    args.out = args.out or str(ROOT / "benchmarks" / "results" /
                               f"mixed_precision_{args.dataset}_{args.model}_{'qat' if args.qat else 'ptq'}.csv")
    torch.set_num_threads(args.threads)
    spec = parse_spec({"name": "mixed", "task": {"dataset": args.dataset, "model": args.model}})
    data = load_data(spec.task)
    from slimtune.search.trial import TrialSetup, model_recipe

    setup = TrialSetup(out_dir="", model=args.model, kind=data.kind)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            base = {"depth": args.depth, "width": args.width, "seed": seed, "prune_method": "none",
                    "per_channel": True, "symmetric": False,
                    "quant_mode": "qat" if args.qat else "ptq", "qat_epochs": args.qat}
            recipe = model_recipe(setup, data, base)
            torch.manual_seed(seed)
            dense = compress.build_model(recipe)
            fit = Fit(lr=args.lr, batch_size=64, epochs=args.epochs, seed=seed)
            t1 = time.perf_counter()
            train(dense, data, fit)
            train_s = time.perf_counter() - t1
            for arm, fields in arms(args.rest).items():
                config = {**base, **fields}
                small, _ = compress_trained(dense, config, data, fit)
                m = measure(small, Trained(dense, recipe, data), replace(setup, out_dir=tmp), f"s{seed}-{len(rows)}")
                rows.append({"dataset": args.dataset, "model": args.model, "seed": seed, "arm": arm,
                             "qat_epochs": args.qat, "val_accuracy": round(m["accuracy"], 4),
                             "test_accuracy": round(m["test_accuracy"], 4), "size_bytes": m["size_bytes"],
                             "layer_bits": m["layer_bits"] or "fp32",
                             "avg_bits": None if m["avg_bits"] is None else round(m["avg_bits"], 3),
                             "train_seconds": round(train_s, 1)})
                print(f"seed {seed} {arm:22s} test {m['test_accuracy']:.4f}  {m['size_bytes']:6d} B  "
                      f"bits {rows[-1]['layer_bits']}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\n{args.dataset} {args.model} width {args.width} depth {args.depth}, {args.epochs} epochs, "
          f"{'QAT %d epochs' % args.qat if args.qat else 'PTQ'}, {args.seeds} seeds "
          f"({time.perf_counter() - t0:.0f} s); median [min, max] over seeds\n")
    print(f"| {'arm':22s} | {'test accuracy':24s} | {'bytes':20s} | {'avg bits':8s} | widths (seed 0) |")
    print(f"|{'-' * 24}|{'-' * 26}|{'-' * 22}|{'-' * 10}|-----------------|")
    for arm in arms(args.rest):
        sel = [r for r in rows if r["arm"] == arm]
        acc = [r["test_accuracy"] for r in sel]
        size = [r["size_bytes"] for r in sel]
        bits = [r["avg_bits"] for r in sel if r["avg_bits"] is not None]
        print(f"| {arm:22s} | {statistics.median(acc):.4f} [{min(acc):.4f}, {max(acc):.4f}] "
              f"| {statistics.median(size):6.0f} [{min(size)}, {max(size)}] "
              f"| {statistics.median(bits) if bits else 32:8.2f} | {sel[0]['layer_bits']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
