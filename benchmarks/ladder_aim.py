"""Aimed vs uniform ladder rungs: digits MLP, ladder 2, 10 trainings (TPE, concurrency 1), front
hypervolume (accuracy x bytes, and accuracy x log10 bytes) per seed. Not in CI.

    python benchmarks/ladder_aim.py aimed 0      # one arm, one seed; prints a RESULT line
    python benchmarks/ladder_aim.py uniform 0    # the uniform draw: the searcher never sees a front
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REF_SIZE = 2.0 * 64 * 128 * 4 + 2 * 128 * 128 * 4  # above any artifact of the space (fp32, depth 2, width 128)


def spec(seed: int) -> dict:
    return {"name": f"ladder-aim-{seed}", "task": {"dataset": "digits", "model": "mlp", "epochs": 3},
            "space": {"lr": {"log_uniform": [0.003, 0.03]}, "batch_size": 64, "depth": {"int": [1, 2]},
                      "width": {"choice": [16, 32, 64, 128]}},
            "compress": {"prune": {"method": "magnitude", "sparsity": {"uniform": [0.0, 0.9]}, "finetune_epochs": 0},
                         "quantize": {"bits": {"choice": [32, 8, 4, 2]}}},
            "search": {"trials": 10, "concurrency": 1, "sampler": "tpe", "seed": seed, "ladder": 2}}


def main(arm: str, seed: int, root: Path) -> str:
    import slimtune.search.searcher.ladder as ladder
    from slimtune.cli import main as cli
    from slimtune.search import load_results
    from slimtune.search.results.pareto import hypervolume

    if arm == "uniform":
        ladder.front_sizes = lambda spec, study: []  # no front seen: the uniform fallback every time
    root.mkdir(parents=True, exist_ok=True)
    (root / "s.yaml").write_text(yaml.safe_dump(spec(seed)))
    t = time.time()
    assert cli(["sweep", str(root / "s.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    wall = time.time() - t
    df = load_results(root / "run")
    df["log_size"] = np.log10(df["size_bytes"].astype(float))
    hv = hypervolume(df, {"accuracy": "max", "size_bytes": "min"}, {"accuracy": 0.0, "size_bytes": REF_SIZE})
    lhv = hypervolume(df, {"accuracy": "max", "log_size": "min"}, {"accuracy": 0.0, "log_size": math.log10(REF_SIZE)})
    return (f"RESULT arm={arm} seed={seed} rows={len(df)} rungs={int(df['parent'].notna().sum())} "
            f"hv={hv:.1f} loghv={lhv:.4f} min_size={df['size_bytes'].min()} wall={wall:.0f}s")


if __name__ == "__main__":
    out = Path(sys.argv[3] if len(sys.argv) > 3 else f"/tmp/ladder_aim/{sys.argv[1]}{sys.argv[2]}")
    print(main(sys.argv[1], int(sys.argv[2]), out))
