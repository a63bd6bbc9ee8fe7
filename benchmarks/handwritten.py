"""The hand-written reference of issue 13: what a user gets by hand, without slimtune.

A 1-D CNN (kernels 5/3/3, stride 2, ReLU, one linear layer), Adam with a cosine learning rate
over 200 epochs (lr 0.01 and batch 100, the MNIST-1D paper's settings), then per-channel
asymmetric round-to-nearest quantization of every weight.
Bytes by its own count, no container: k-bit weights + fp16 scale and offset per output channel
+ fp16 biases. The data is slimtune's built-in ``mnist1d`` task with its split (split_seed 0:
3,200 train / 800 validation / 1,000 test), so the test numbers compare with a sweep's.

    python benchmarks/handwritten.py                    # widths 12 @ 8 bits and 25 @ 4 bits, seeds 0-2
    python benchmarks/handwritten.py --seeds 0 --epochs 5   # a quick check
    python benchmarks/handwritten.py --all-rows --out /tmp/hw.csv   # trained on all 4,000 rows

Writes benchmarks/results/handwritten.csv (one row per width, bits, seed) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from slimtune.search.task.data import load_data  # noqa: E402
from slimtune.spaces import parse_spec  # noqa: E402


def cnn(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, width, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * 5, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
          lr: float = 1e-2, batch: int = 100) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()


@torch.no_grad()
def quantize_(model: nn.Module, bits: int) -> int:
    """Round every weight to ``bits`` per output channel (in place); returns the bytes counted."""
    size = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            w = m.weight.reshape(len(m.weight), -1)
            lo = w.min(1, keepdim=True).values.half().float()
            scale = ((w.max(1, keepdim=True).values - lo) / (2 ** bits - 1)).clamp_min(1e-8).half().float()
            q = ((w - lo) / scale).round().clamp(0, 2 ** bits - 1)
            m.weight.copy_((q * scale + lo).reshape(m.weight.shape))
            m.bias.copy_(m.bias.half().float())
            size += -(-w.numel() * bits // 8) + 2 * 2 * len(w) + 2 * len(m.bias)
    return size


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.eval()(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--arms", nargs="+", default=["12:8", "25:4"], help="width:bits pairs")
    ap.add_argument("--all-rows", action="store_true",
                    help="train on training + validation rows (all 4,000, as the MNIST-1D paper does)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "handwritten.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = parse_spec({"name": "ref", "task": {"dataset": "mnist1d", "model": "cnn", "validation_split": 0.2}})
    d = load_data(spec.task)
    x, y, xv, yv, xt, yt = (torch.from_numpy(np.array(a)) for a in
                            (d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test))
    if args.all_rows:
        x, y = torch.cat([x, xv]), torch.cat([y, yv])
    rows = []
    for arm in args.arms:
        width, bits = map(int, arm.split(":"))
        for seed in args.seeds:
            torch.manual_seed(seed)
            model, t0 = cnn(width), time.perf_counter()
            train(model, x, y, args.epochs, seed)
            row = {"width": width, "bits": bits, "seed": seed, "epochs": args.epochs,
                   "fp32_test_accuracy": accuracy(model, xt, yt),
                   "fp32_bytes": 4 * sum(p.numel() for p in model.parameters())}
            row["bytes"] = quantize_(model, bits)
            row.update(val_accuracy=accuracy(model, xv, yv), test_accuracy=accuracy(model, xt, yt),
                       train_seconds=round(time.perf_counter() - t0, 1))
            rows.append(row)
            print(row, flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    summary = df.groupby(["width", "bits"]).agg(
        seeds=("seed", "count"), bytes=("bytes", "first"), fp32_bytes=("fp32_bytes", "first"),
        test_min=("test_accuracy", "min"), test_median=("test_accuracy", "median"),
        test_max=("test_accuracy", "max"), fp32_test_median=("fp32_test_accuracy", "median"),
        train_s_median=("train_seconds", "median"))
    print(summary.to_string(float_format="{:.4f}".format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
