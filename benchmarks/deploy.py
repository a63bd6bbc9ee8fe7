"""Deployable exports that keep compression: size, accuracy and latency of every front trial.

    python benchmarks/deploy.py                                  # the six sweeps of /tmp/deploy/runs
    python benchmarks/deploy.py /tmp/deploy/runs/digits-s0 --out /tmp/deploy_try.md
    python benchmarks/deploy.py --run-sweeps runs/deploy         # first: examples/{digits,mnist1d}.yaml, seeds 0-2

For every trial on the Pareto front (``pareto_front(load_results(sweep))``) of each finished
sweep (results.parquet there, no live driver holding its ``.lock``) one row, per seed:

* ``size``: the trial's artifact (``size_bytes``); ``onnx``: the compressed ONNX export
  (``export_trial(..., "onnx")``, integer codes + ``DequantizeLinear``, raw features in);
  ``target``: 1.3 x size + 512 and whether ``onnx`` meets it; ``dense``: the dense fp32 ONNX
  (``onnx-dense``, ``torch.onnx.export``) without its manifest metadata (the compressed file keeps
  its manifest in a sidecar, so neither length counts it); ``flash``/``ram``: the C export
  compiled here (``slimtune.json``'s ``c``: host compiler, ``deploy.CFLAGS``).
* accuracy on the sweep's own test split (``load_data`` with the sweep's spec and split seed):
  PyTorch (``load_model`` on the preprocessed features), onnxruntime (compressed ONNX on raw
  features = x_test * x_std + x_mean), C (``load_exported(folder).logits`` on raw features);
  ``agree``: fraction of test rows whose predicted class equals PyTorch's (must be 1.0).
* latency: onnxruntime, one ``InferenceSession`` per file (CPU, intra/inter-op threads 1),
  10 warm-up runs, then the median of 200 (batch 1) / 50 (batch 256) timed ``sess.run`` calls.
* the standard route for comparison: ``onnxruntime.quantization.quantize_dynamic`` (QInt8
  weights) and ``quantize_static`` (QDQ, int8 weights and activations, calibrated on 100 raw
  training rows) of the dense ONNX: bytes and test accuracy ("n/a: reason" where one fails).

Then per example (digits, MNIST-1D): median and max onnx/size, rows meeting the target, median
flash/size, median latency ratios compressed/dense, the smallest agreement. Prints the tables
and writes them to benchmarks/results/deploy.md (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import slimtune  # noqa: E402
from slimtune.search.present.predict import load_exported  # noqa: E402

RUNS = Path("/tmp/deploy/runs")
DEFAULT = [RUNS / f"{ex}-s{s}" for ex in ("digits", "mnist1d") for s in (0, 1, 2)]
EXAMPLES = {"digits": ROOT / "examples" / "digits.yaml", "mnist1d": ROOT / "examples" / "mnist1d.yaml"}
REPEATS, WARMUP, CALIB_ROWS = {1: 200, 256: 50}, 10, 100  # timed runs per batch size, warm-up runs, calibration rows
SWEEP = [sys.executable, "-m", "slimtune", "sweep"]


@dataclass(frozen=True)
class Split:
    """A sweep's test split (model input and raw features) and raw training rows for calibration."""

    x_test: np.ndarray  # preprocessed, (rows, *input_shape): what PyTorch takes
    y_test: np.ndarray
    raw_test: np.ndarray  # (rows, *input_shape) raw features: what the ONNX and C exports take
    raw_calib: np.ndarray


def finished(path: Path) -> str | None:
    """None when ``path`` holds a finished sweep, else why not."""
    from slimtune.search.lease import Lease
    from slimtune.search.storage import Storage

    if not (path / "results.parquet").is_file() or not (path / "sweep.json").is_file():
        return "no results.parquet / sweep.json"
    lease = Lease(Storage.open(path), ".lock")
    rec = lease.holder()
    if rec is not None and not lease.stale(rec):
        return f"still running (pid {rec.get('pid')})"
    return None


def run_sweeps(folder: Path) -> list[Path]:
    """examples/digits.yaml and examples/mnist1d.yaml at search.seed 0, 1, 2 into ``folder``."""
    import yaml

    out = []
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deploy-specs-") as tmp:
        for name, spec_path in EXAMPLES.items():
            raw = yaml.safe_load(spec_path.read_text())
            for seed in (0, 1, 2):
                raw["search"]["seed"] = seed
                spec = Path(tmp) / f"{name}-s{seed}.yaml"
                spec.write_text(yaml.safe_dump(raw, sort_keys=False))
                dest = folder / f"{name}-s{seed}"
                if not dest.exists():
                    subprocess.run([*SWEEP, str(spec), "--out", str(dest), "--quiet"], check=True)
                out.append(dest)
    return out


def test_split(path: Path) -> Split:
    """The test split the sweep used (its spec, split seed and base folder), raw and preprocessed."""
    from slimtune.search.results.table import sweep_meta
    from slimtune.search.task.data import load_data, sweep_split_seed

    meta = sweep_meta(path)
    spec = slimtune.parse_spec(meta["spec"])
    base = Path(meta["base_dir"]) if meta.get("base_dir") else None
    data = load_data(spec.task, sweep_split_seed(meta), base)
    pre = meta.get("preprocess") or {}
    mean = np.asarray(pre.get("x_mean", 0.0), np.float64).reshape(-1)
    std = np.asarray(pre.get("x_std", 1.0), np.float64).reshape(-1)

    def raw(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64) * std + mean
        return flat.reshape(x.shape).astype(np.float32)

    return Split(data.x_test.astype(np.float32), np.asarray(data.y_test), raw(data.x_test),
                 raw(data.x_train[:CALIB_ROWS]))


def session(model: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def ort_classes(sess, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([np.argmax(sess.run(None, {name: x[i:i + 512]})[0], axis=1)
                           for i in range(0, len(x), 512)])


def latency_us(sess, x: np.ndarray, batch: int) -> float:
    """Median µs of one ``sess.run`` on the first ``batch`` rows of ``x`` (after warm-up)."""
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x[:batch])}
    for _ in range(WARMUP):
        sess.run(None, feed)
    times = []
    for _ in range(REPEATS[batch]):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def strip_manifest(dense: Path) -> bytes:
    """The dense ONNX without its ``slimtune`` metadata (the manifest), as bytes."""
    import onnx

    proto = onnx.load(str(dense))
    keep = [onnx.StringStringEntryProto(key=p.key, value=p.value) for p in proto.metadata_props if p.key != "slimtune"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    return proto.SerializeToString()


def standard_route(dense: Path, split: Split, tmp: Path) -> dict:
    """quantize_dynamic (QInt8) and quantize_static (QDQ int8) of the dense ONNX: bytes, accuracy."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    calib = iter([{"x": split.raw_calib[i:i + 1]} for i in range(len(split.raw_calib))])
    reader = SimpleNamespace(get_next=lambda: next(calib, None))  # a CalibrationDataReader: one row a batch
    out: dict = {}
    runs = {
        "qdyn": lambda dst: quantize_dynamic(str(dense), str(dst), weight_type=QuantType.QInt8),
        "qstat": lambda dst: quantize_static(str(dense), str(dst), reader,
                                             quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                                             weight_type=QuantType.QInt8),
    }
    for key, quantize in runs.items():
        dst = tmp / f"{key}.onnx"
        try:
            quantize(dst)
            acc = float(np.mean(ort_classes(session(dst), split.raw_test) == split.y_test))
            out[key] = (dst.stat().st_size, acc)
        except Exception as exc:  # the standard route may not apply to a model: say why
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:80]
            out[key] = (f"n/a: {reason}", f"n/a: {reason}")
    return out


def torch_classes(sweep: Path, trial: int, split: Split) -> np.ndarray:
    import torch

    model = slimtune.load_model(sweep, trial).eval()
    with torch.no_grad():
        return np.argmax(model(torch.from_numpy(split.x_test)).numpy(), axis=1)


@dataclass(frozen=True)
class Trial:
    """One front trial being measured: where its sweep is, its number and size, PyTorch's classes."""

    sweep: Path
    number: int
    size: int
    want: np.ndarray  # PyTorch's predicted class of each test row
    split: Split


def onnx_part(t: Trial, tmp: Path) -> dict:
    """The compressed ONNX export: bytes against the target, accuracy, agreement, latency."""
    path = slimtune.export_trial(t.sweep, t.number, "onnx", tmp / "model.onnx")
    sess = session(path)
    got = ort_classes(sess, t.split.raw_test)
    size, target = path.stat().st_size, 1.3 * t.size + 512
    rec = {"onnx": size, "onnx/size": size / t.size, "target": target, "met": size <= target,
           "acc_ort": float(np.mean(got == t.split.y_test)), "agree_ort": float(np.mean(got == t.want))}
    return rec | {f"comp_b{b}": latency_us(sess, t.split.raw_test, b) for b in REPEATS}


def c_part(t: Trial, tmp: Path) -> dict:
    """The C export: flash and RAM as compiled here, accuracy and agreement of the compiled harness."""
    folder = slimtune.export_trial(t.sweep, t.number, "c", tmp / "c")
    info = json.loads((folder / "slimtune.json").read_text())["c"]
    exported = load_exported(folder, trust_code=True)  # our own export, compiled here
    got = np.argmax(exported.logits(exported.model_input(t.split.raw_test)), axis=1)
    return {"flash": info.get("flash_bytes"), "ram": info.get("ram_bytes"),
            "acc_c": float(np.mean(got == t.split.y_test)), "agree_c": float(np.mean(got == t.want))}


def dense_part(t: Trial, tmp: Path) -> dict:
    """The dense fp32 ONNX (manifest metadata removed): bytes, latency, and the standard route."""
    path = slimtune.export_trial(t.sweep, t.number, "onnx-dense", tmp / "dense.onnx")
    dense = strip_manifest(path)
    path.write_bytes(dense)
    sess = session(path)
    rec = {"dense": len(dense)} | {f"dense_b{b}": latency_us(sess, t.split.raw_test, b) for b in REPEATS}
    return rec | {f"{k}_{what}": v for k, pair in standard_route(path, t.split, tmp).items()
                  for what, v in zip(("bytes", "acc"), pair)}


PARTS = {onnx_part: ["onnx", "onnx/size", "target", "met", "acc_ort", "agree_ort", "comp_b1", "comp_b256"],
         c_part: ["flash", "ram", "acc_c", "agree_c"],
         dense_part: ["dense", "dense_b1", "dense_b256", "qdyn_bytes", "qdyn_acc", "qstat_bytes", "qstat_acc"]}


def measure(sweep: Path, row, split: Split, failed: list[str]) -> dict:
    """One front trial of ``sweep``; an export that fails fills its columns with FAILED and is
    named in ``failed``, the others are still measured."""
    want = torch_classes(sweep, int(row["trial_number"]), split)
    t = Trial(sweep, int(row["trial_number"]), int(row["size_bytes"]), want, split)
    rec = {"trial": t.number, "size": t.size, "acc_sweep": float(row["test_accuracy"]),
           "acc_torch": float(np.mean(want == split.y_test))}
    for part, keys in PARTS.items():
        tmp = Path(tempfile.mkdtemp(prefix="deploy-"))
        try:
            rec.update(part(t, tmp))
        except Exception as exc:  # report it and measure the rest
            failed.append(f"{sweep.name} trial {t.number}, {part.__name__}: {type(exc).__name__}: {exc}")
            print(f"  FAILED {failed[-1]}", file=sys.stderr, flush=True)
            rec.update(dict.fromkeys(keys, "FAILED"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rec


def sweep_rows(sweep: Path, failed: list[str]) -> list[dict]:
    """One row per front trial of ``sweep``, smallest first (failed exports named in ``failed``)."""
    from slimtune.search.results.table import sweep_meta

    meta = sweep_meta(sweep)
    split = test_split(sweep)
    front = slimtune.pareto_front(slimtune.load_results(sweep)).sort_values("size_bytes")
    rows = []
    for _, row in front.iterrows():
        rec = measure(sweep, row, split, failed)
        rec = {"example": meta["spec"]["task"]["dataset"], "sweep": sweep.name,
               "seed": meta["spec"].get("search", {}).get("seed"), **rec}
        print(f"  {sweep.name} trial {rec['trial']}: onnx/size {fmt(rec['onnx/size'])}, agree "
              f"{fmt(rec['agree_ort'])}/{fmt(rec['agree_c'])}", file=sys.stderr, flush=True)
        rows.append(rec)
    return rows


def fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return "" if v is None else str(v)


def table(rows: list[dict], cols: list[tuple[str, str]]) -> list[str]:
    out = ["| " + " | ".join(title for _, title in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r[key]) for key, _ in cols) + " |" for r in rows]
    return out


SIZE_COLS = [("sweep", "sweep"), ("seed", "seed"), ("trial", "trial"), ("size", "size_bytes"),
             ("onnx", "onnx_bytes"), ("onnx/size", "onnx/size"), ("target", "target 1.3x+512"), ("met", "met"),
             ("dense", "dense ONNX"), ("flash", "flash_bytes"), ("ram", "ram_bytes"),
             ("acc_sweep", "test_accuracy (sweep)"), ("acc_torch", "acc torch"), ("acc_ort", "acc ORT"),
             ("acc_c", "acc C"), ("agree_ort", "agree ORT"), ("agree_c", "agree C")]
SPEED_COLS = [("sweep", "sweep"), ("trial", "trial"), ("comp_b1", "comp b1 µs"), ("dense_b1", "dense b1 µs"),
              ("comp_b256", "comp b256 µs"), ("dense_b256", "dense b256 µs"),
              ("qdyn_bytes", "dyn-int8 bytes"), ("qdyn_acc", "dyn-int8 acc"),
              ("qstat_bytes", "static-QDQ bytes"), ("qstat_acc", "static-QDQ acc")]


def _num(rs: list[dict], key: str) -> list[float]:
    return [r[key] for r in rs if isinstance(r[key], (int, float)) and not isinstance(r[key], bool)]


def _ratio(rs: list[dict], a: str, b: str) -> float | None:
    vals = [r[a] / r[b] for r in rs if _num([r], a) and _num([r], b)]
    return statistics.median(vals) if vals else None


def summary(rows: list[dict]) -> list[dict]:
    """Per example: onnx/size (median, max), the target, flash/size, latency ratios, agreement."""
    out = []
    for example in sorted({r["example"] for r in rows}):
        rs = [r for r in rows if r["example"] == example]
        ratio, agree = _num(rs, "onnx/size"), _num(rs, "agree_ort") + _num(rs, "agree_c")
        same = [r for r in rs if _num([r], "acc_ort") and _num([r], "acc_c")]
        out.append({
            "example": example, "sweeps": len({r["sweep"] for r in rs}), "rows": len(rs),
            "failed": sum(any(v == "FAILED" for v in r.values()) for r in rs),
            "med_ratio": statistics.median(ratio) if ratio else None, "max_ratio": max(ratio, default=None),
            "met": f"{sum(r['met'] is True for r in rs)}/{len(rs)}",
            "flash_ratio": _ratio(rs, "flash", "size"), "dense_ratio": _ratio(rs, "dense", "onnx"),
            "qdyn_ratio": _ratio(rs, "qdyn_bytes", "onnx"),
            "lat1": _ratio(rs, "comp_b1", "dense_b1"), "lat256": _ratio(rs, "comp_b256", "dense_b256"),
            "agree": min(agree, default=None),
            "acc_equal": f"{sum(r['acc_ort'] == r['acc_c'] == r['acc_torch'] for r in same)}/{len(same)}",
        })
    return out


SUMMARY_COLS = [("example", "example"), ("sweeps", "sweeps"), ("rows", "front rows"),
                ("failed", "rows with a failed export"),
                ("med_ratio", "median onnx/size"), ("max_ratio", "max onnx/size"), ("met", "meet target"),
                ("flash_ratio", "median flash/size"), ("dense_ratio", "median dense/onnx"),
                ("qdyn_ratio", "median dyn-int8/onnx"), ("lat1", "median latency comp/dense b1"),
                ("lat256", "median latency comp/dense b256"), ("agree", "min agreement ORT, C"),
                ("acc_equal", "acc torch=ORT=C")]


def header(argv: list[str], skipped: list[str]) -> list[str]:
    import onnxruntime
    import torch

    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), platform.processor())
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = ["# Deployable exports: compressed ONNX and C against the artifact, dense ONNX and onnxruntime int8", "",
             f"- date: {date}",
             f"- machine: {cpu}, {os.cpu_count()} cores (load average at start {load}; not a quiet machine)",
             f"- onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, python {platform.python_version()}",
             f"- command: `{' '.join(['python', 'benchmarks/deploy.py', *argv])}`",
             "- see the docstring of benchmarks/deploy.py for what each column measures"]
    return lines + [f"- skipped: {s}" for s in skipped]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="*", type=Path, help=f"sweep folders (default: the six in {RUNS})")
    parser.add_argument("--run-sweeps", type=Path, metavar="DIR",
                        help="first run examples/digits.yaml and mnist1d.yaml, seeds 0-2, into DIR (and use them)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deploy.md")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs advice at WARNING
    import torch

    torch.set_num_threads(1)
    sweeps = list(args.sweeps) + (run_sweeps(args.run_sweeps) if args.run_sweeps else [])
    sweeps = sweeps or [p for p in DEFAULT if p.exists()]
    rows, skipped, failed = [], [], []
    for sweep in sweeps:
        why = finished(sweep)
        if why:
            skipped.append(f"{sweep}: {why}")
            continue
        rows += sweep_rows(sweep, failed)
    text = header(argv, skipped) + [f"- failed: {f}" for f in failed]
    text += ["", "## Summary per example", "", *table(summary(rows), SUMMARY_COLS),
             "", "## Sizes and accuracy, every front row", "", *table(rows, SIZE_COLS),
             "", "## Latency (onnxruntime, 1 thread) and the standard route (onnxruntime.quantization)", "",
             *table(rows, SPEED_COLS)]
    print("\n".join(text))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
