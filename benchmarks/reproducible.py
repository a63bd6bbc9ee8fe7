"""Wall-time cost of ``search.reproducible`` on the reproducible-mode test's spec (examples/digits.yaml
shrunk: 6 trainings, ladder 2, early stopping, concurrency 2): one sweep in each mode, and
whether each mode's second run repeats its first (rows without Ray ids and timings, artifacts).

    python benchmarks/reproducible.py [--runs 1]

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fingerprint(out: Path) -> str:
    from slimtune.search import load_results
    from tests.test_reproducible import VARYING

    df = load_results(out)
    arts = [hashlib.sha256((out / a).read_bytes()).hexdigest() for a in df["artifact"].dropna()]
    return hashlib.sha256(df.drop(columns=VARYING).to_csv(index=False).encode() + "".join(arts).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="sweeps per mode (2+ also checks repeatability)")
    args = ap.parse_args(argv)
    import ray

    from slimtune.search import run_sweep
    from slimtune.spaces import parse_spec
    from tests.test_reproducible import digits_like

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print(f"{'mode':<14}{'run':>4}{'wall_s':>9}{'rows':>6}{'stopped':>9}  fingerprint")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in (False, True):
            for k in range(args.runs):
                out = Path(tmp) / f"{mode}-{k}"
                t0 = time.perf_counter()
                df = run_sweep(parse_spec(digits_like(f"bench-{mode}-{k}", reproducible=mode)), out, quiet=True)
                wall = time.perf_counter() - t0
                print(f"{'reproducible' if mode else 'normal':<14}{k:>4}{wall:>9.1f}{len(df):>6}"
                      f"{int((df['status'] == 'stopped').sum()):>9}  {fingerprint(out)[:12]}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
