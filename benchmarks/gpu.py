"""Trainings per minute of the MNIST-1D example's space on a GPU at gpu: 1, 0.5, 0.25, 0.125 per
trial, and on the CPU, each a sweep of the example with ``--trials`` new configurations (no
promotion, ladder 0: one training per trial), concurrency as many trials as fit.

    python benchmarks/gpu.py                      # where a GPU is: every setting, 16 trials each
    python benchmarks/gpu.py --trials 4 --only cpu   # a quick check of the script on any machine

Prints a table (setting, concurrency, trainings, seconds, trainings per minute, devices seen in
the rows) and writes it to benchmarks/results/gpu.md. On a machine without a GPU the GPU
settings are skipped with a line saying so (they would stop with exit 2: no node has a GPU).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from slimtune.search import load_results, run_sweep  # noqa: E402
from slimtune.spaces import parse_spec  # noqa: E402

SETTINGS = {"gpu-1": 1.0, "gpu-0.5": 0.5, "gpu-0.25": 0.25, "gpu-0.125": 0.125, "cpu": 0.0}


def spec_for(gpu: float, trials: int, cpus: int, gpus: int) -> dict:
    raw = yaml.safe_load((ROOT / "examples" / "mnist1d.yaml").read_text())
    spec = copy.deepcopy(raw)
    per_trial_cpu = 1
    slots = cpus // per_trial_cpu if gpu == 0 else min(cpus, int(gpus / gpu))
    spec["name"] = f"gpu-bench-{str(gpu).replace('.', '_')}"
    spec["search"] = {**spec["search"], "trials": trials, "concurrency": max(1, slots), "ladder": 0}
    spec["search"].pop("promote", None)
    spec["resources"] = {"cpu": per_trial_cpu, "gpu": gpu}
    return spec


def run(name: str, gpu: float, trials: int) -> dict:
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    spec = spec_for(gpu, trials, cpus, gpus)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_sweep(parse_spec(spec), Path(tmp) / "run", quiet=True)
        seconds = time.perf_counter() - t0
        df = load_results(Path(tmp) / "run")
    ok = df[df["status"] == "ok"]
    return {"setting": name, "concurrency": spec["search"]["concurrency"], "trainings": len(ok),
            "seconds": round(seconds, 1), "per_minute": round(60 * len(ok) / seconds, 2),
            "devices": ",".join(sorted(set(ok["device"].astype(str))))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--only", nargs="*", choices=sorted(SETTINGS), default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.md"))
    args = ap.parse_args()
    rows = []
    for name, gpu in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        if gpu > 0 and not torch.cuda.device_count():
            print(f"{name}: skipped, no GPU on this machine")
            continue
        rows.append(run(name, gpu, args.trials))
        print(rows[-1], flush=True)
    head = "| setting | concurrency | trainings | seconds | trainings/min | devices |\n|---|---|---|---|---|---|\n"
    table = head + "".join(f"| {r['setting']} | {r['concurrency']} | {r['trainings']} | {r['seconds']} | "
                           f"{r['per_minute']} | {r['devices']} |\n" for r in rows)
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.device_count() else "none"
    text = (f"# MNIST-1D example space: trainings per minute by GPU share\n\n- date: {time.strftime('%Y-%m-%d')}\n"
            f"- CPUs: {os.cpu_count()}, GPU: {gpu_name}, torch {torch.__version__}\n"
            f"- command: `python benchmarks/gpu.py --trials {args.trials}`\n\n" + table)
    print(table)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
