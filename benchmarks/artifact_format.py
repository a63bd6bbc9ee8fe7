"""Artifact format 3 against format 2, and float16 against float32 scales and biases.

    python benchmarks/artifact_format.py            # 3 seeds, digits MLP + MNIST-1D CNN (~1-2 min)
    python benchmarks/artifact_format.py --seeds 1

Per dataset and seed a small model is trained (digits: MLP 64-32-10, 15 epochs; MNIST-1D:
CNN depth 2 width 16, 20 epochs; Adam, lr 3e-3, batch 64), then compressed in a few ways
(PTQ at 4 and 8 bits; magnitude pruning 50 % with 3 masked fine-tune epochs, then 4 bits).
Each compressed model is quantized twice from the same weights: ``AffineQuantize(fp16=False)``
(fp32 scales and biases, as before format 3) and ``AffineQuantize(fp16=True)`` (scales rounded
up to float16, the quantized layers' biases to the nearest float16; the default).  Columns:

* ``fmt2``: the fp32 model written as format 2 was (JSON manifest with per-tensor table,
  configs, the trial's four metrics and library versions; same tensor encodings; LZMA),
  rebuilt here from the format-2 layout and checked to load back exactly;
* ``fmt3_fp32``: the fp32 model in format 3; ``fmt3``: the fp16 model in format 3 (what a
  sweep writes now);
* ``val_fp32``/``val_fp16`` and ``test_fp32``/``test_fp16``: accuracy of the two models; each
  format-3 file is loaded back and must give the saved model's outputs exactly.

Prints one row per (dataset, seed, method), the median change per dataset, and the artifacts
of tests/fixtures/sweep_v1 (format 2) re-saved in format 3; writes
benchmarks/results/artifact_format.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import lzma
import platform
import statistics
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimtune import compress, search, spaces
from slimtune.compress import AffineQuantize, MagnitudePrune
from slimtune.compress._artifact import _lzma_filters, _smallest
from slimtune.compress._codes import unpack_bits

MODELS = {
    "digits": {"arch": "mlp", "input_shape": [8, 8], "output_dim": 10, "depth": 1, "width": 32},
    "mnist1d": {"arch": "cnn", "input_shape": [40], "output_dim": 10, "depth": 2, "width": 16},
}
EPOCHS = {"digits": 15, "mnist1d": 20}
METHODS = {"ptq4": (None, 4), "ptq8": (None, 8), "prune50+4": (0.5, 4)}


def format2_bytes(model: torch.nn.Module, recipe: dict, configs: list, metrics: dict) -> bytes:
    """``model`` as the format-2 writer wrote it (its layout, kept in `compress/_artifact.py`'s
    docstring history): b"SLIMTUN\\x02", codec, LZMA2(uint32 n | JSON manifest | data)."""
    prunable = {f"{n}.weight": m for n, m in compress.prunable_modules(model)}
    chosen = []
    for name, t in model.state_dict().items():
        t = t.detach().contiguous()
        if name in prunable:
            entry, parts, codes_at, codes = _smallest(name, t, getattr(prunable[name], "weight_qparams", None))
        else:
            entry = {"layout": "dense", "values": "raw", "dtype": "float32"}
            parts, codes_at, codes = [t.numpy().astype("<f4").tobytes()], None, None
        assert "stored" not in entry and "scales" not in entry, "format 2 holds fp32 only"
        chosen.append((name, list(t.shape), entry, parts, codes_at, codes))
    jsons = [compress.config_to_json(c) for c in configs]
    for j in jsons:  # the configs as format 2 recorded them (AffineQuantize version 1)
        if j["_data"].pop("fp16", None) is not None:
            j["_version"] = 1
    versions = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    best = None
    for byte_codes in (False, True):
        data, table = bytearray(), []
        for name, shape, entry, parts, codes_at, codes in chosen:
            e = {"name": name, "shape": shape, "dtype": "float32", "layout": entry["layout"],
                 "values": entry["values"], "offset": len(data)}
            if entry["values"] == "codes":
                e.update(bits=entry["bits"], per_channel=entry["per_channel"])
                if byte_codes:
                    parts = list(parts)
                    parts[codes_at] = unpack_bits(parts[codes_at], *codes).tobytes()
                    e["packing"] = "bytes"
            e["parts"] = [len(p) for p in parts]
            table.append(e)
            data += b"".join(parts)
        manifest = {"format": 2, "recipe": recipe, "configs": jsons, "metrics": metrics, "versions": versions,
                    "tensors": table}
        head = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        body = struct.pack("<I", len(head)) + head + bytes(data)
        log2 = max(12, min(26, (len(body) - 1).bit_length()))
        blob = b"SLIMTUN\x02" + bytes([1, log2]) + lzma.compress(body, format=lzma.FORMAT_RAW,
                                                                  filters=_lzma_filters(log2, len(body)))
        best = blob if best is None or len(blob) < len(best) else best
    return best


def _outputs(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x))


def run_one(dataset: str, seed: int, data, tmp: Path) -> list[dict]:
    recipe = MODELS[dataset]
    torch.manual_seed(seed)
    dense = compress.build_model(recipe)
    args = {"lr": 3e-3, "batch_size": 64, "seed": seed}
    search.train(dense, data, search.Fit(epochs=EPOCHS[dataset], **args))
    rows = []
    for method, (sparsity, bits) in METHODS.items():
        model, prune = compress.compress(dense), []
        if sparsity:
            prune = [MagnitudePrune(sparsity=sparsity)]
            model = compress.compress(dense, *prune)
            masks = compress.sparsity_masks(model)
            search.train(model, data, search.Fit(epochs=3, **{**args, "seed": seed + 1}),
                         after_step=lambda m, masks=masks: compress.apply_masks_(m, masks))
        row = {"dataset": dataset, "seed": seed, "method": method}
        for half in (False, True):
            cfg = [*prune, AffineQuantize(bits=bits, fp16=half)]
            small = compress.compress(model, cfg[-1])
            val = search.evaluate(small, data.x_val, data.y_val, data.kind)
            test = search.evaluate(small, data.x_test, data.y_test, data.kind)
            tag = "fp16" if half else "fp32"
            row[f"val_{tag}"], row[f"test_{tag}"] = val["accuracy"], test["accuracy"]
            n = compress.save(small, tmp / "m.slim")
            again = compress.load(tmp / "m.slim")
            assert torch.equal(_outputs(again, data.x_val), _outputs(small, data.x_val)), "format 3 not exact"
            row["fmt3" if half else "fmt3_fp32"] = n
            if not half:
                metrics = {"accuracy": val["accuracy"], "loss": val["loss"], "test_accuracy": test["accuracy"],
                           "test_loss": test["loss"]}
                blob = format2_bytes(small, recipe, cfg, metrics)
                assert torch.equal(_outputs(compress.load(blob), data.x_val), _outputs(small, data.x_val))
                row["fmt2"] = len(blob)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for dataset in MODELS:
            data = search.load_data(spaces.Task(dataset=dataset, model=MODELS[dataset]["arch"],
                                                epochs=spaces.Fixed(1)), seed=0)
            for seed in range(args.seeds):
                rows += run_one(dataset, seed, data, Path(d))
    cols = ["dataset", "seed", "method", "fmt2", "fmt3_fp32", "fmt3", "val_fp32", "val_fp16", "test_fp32", "test_fp16"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print()
    print("| dataset | median bytes fmt2 -> fmt3_fp32 -> fmt3 | val change fp16 - fp32 (pts): median, mean, "
          "min..max | models better / same / worse (val) | test change: median, mean |")
    print("|---|---|---|---|---|")
    for dataset in MODELS:
        rs = [r for r in rows if r["dataset"] == dataset]
        dv = [100 * (r["val_fp16"] - r["val_fp32"]) for r in rs]
        dt = [100 * (r["test_fp16"] - r["test_fp32"]) for r in rs]
        sizes = " -> ".join(f"{statistics.median(r[c] for r in rs):.0f}" for c in ("fmt2", "fmt3_fp32", "fmt3"))
        counts = f"{sum(v > 0 for v in dv)} / {sum(v == 0 for v in dv)} / {sum(v < 0 for v in dv)}"
        print(f"| {dataset} | {sizes} | {statistics.median(dv):+.2f}, {statistics.mean(dv):+.2f}, "
              f"{min(dv):+.2f}..{max(dv):+.2f} | {counts} | {statistics.median(dt):+.2f}, {statistics.mean(dt):+.2f} |")
    print()
    print("Artifacts of a real sweep (tests/fixtures/sweep_v1, format 2) re-saved in format 3: the same")
    print("model (fp32 scales and biases, so only the container changes), loaded back exactly.")
    print()
    print("| artifact | format 2 bytes | format 3 bytes |")
    print("|---|---|---|")
    for path in sorted((ROOT / "tests" / "fixtures" / "sweep_v1" / "artifacts").glob("*.slim")):
        model = compress.load(path)
        with tempfile.TemporaryDirectory() as d:
            n = compress.save(model, Path(d) / "m.slim")
            x = torch.randn(8, *compress.recipe_of(model)["input_shape"], generator=torch.Generator().manual_seed(0))
            assert torch.equal(_outputs(compress.load(Path(d) / "m.slim"), x.numpy()), _outputs(model, x.numpy()))
        print(f"| {path.name} | {path.stat().st_size} | {n} |")
    out = ROOT / "benchmarks" / "results" / "artifact_format.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({c: r[c] for c in cols} for r in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
