"""Size and CPU latency of each compression method on the built-in models.

    python benchmarks/compression.py [--repeats N] [--format table|json]

Untrained, seeded models: sizes are the bytes of the artifact `compress.save`
writes, compared with the same container holding the dense fp32 model.
Accuracy is not measured here (that needs training; see `search/`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compress  # noqa: E402
from compress import AffineQuantize, MagnitudePrune, StructuredPrune  # noqa: E402

RECIPES = {
    "mlp-digits": {"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 2, "width": 128},
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


def run(repeats: int) -> list[dict]:
    rows = []
    for model_name, recipe in RECIPES.items():
        torch.manual_seed(0)
        model = compress.build_model(recipe)
        for method, configs in METHODS.items():
            report = compress.summary(compress.compress(model, *configs), repeats=repeats)
            rows.append({"model": model_name, "method": method, **report})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    rows = run(args.repeats)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    cols = ["model", "method", "dense_bytes", "artifact_bytes", "compression_ratio",
            "bits_per_weight", "nonzero_params", "latency_ms_b1", "latency_ms_b256"]
    print("  ".join(f"{c:>15}" for c in cols))
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        print("  ".join(f"{c:>15}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
