"""The benchmark scripts' own logic, without running a sweep or a training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gate_picks_by_validation_within_the_bound():
    gate = _script("mnist1d_gate")
    df = pd.DataFrame({
        "status": ["ok", "ok", "ok", "ok", "failed", "ok"],
        "feasible": [True, True, True, True, True, False],
        "accuracy": [0.80, 0.90, 0.90, 0.95, 0.99, 0.99],   # validation
        "test_accuracy": [0.99, 0.85, 0.86, 0.90, 0.99, 0.99],
        "size_bytes": [900, 1900, 1800, 2500, 100, 100],
    })
    assert gate.pick(df, 1000)["size_bytes"] == 900  # the only ok, feasible row within 1,000 B
    best = gate.pick(df, 2000)  # best validation (not test); of two equal, the smaller file
    assert (best["accuracy"], best["size_bytes"]) == (0.90, 1800)
    assert gate.pick(df, 3000)["size_bytes"] == 2500
    assert gate.pick(df, 50) is None


def test_gate_quick_spec_shrinks_the_example():
    gate = _script("mnist1d_gate")
    raw = gate.spec_for(ROOT / "examples" / "mnist1d.yaml", seed=3, trials=None, quick=True)
    assert raw["search"]["seed"] == 3 and raw["search"]["trials"] == 4
    # a promoting example keeps task.epochs unset (the rungs set it) and gets short rungs
    assert "epochs" not in raw["task"] and raw["search"]["promote"]["rungs"] == [3, 5]
    assert raw["compress"]["quantize"]["qat_epochs"] == 1
    assert gate.spec_for(ROOT / "examples" / "mnist1d.yaml", seed=0, trials=7, quick=False)["search"]["trials"] == 7


def test_handwritten_counts_its_bytes_and_rounds_to_its_grid():
    hw = _script("handwritten")
    torch.manual_seed(0)
    model = hw.cnn(12)
    before = [m.weight.clone() for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    size = hw.quantize_(model, 8)
    # 1,524 weights at 8 bits + fp16 scale and offset per output channel (46) + 46 fp16 biases
    assert size == 1524 + 46 * 4 + 46 * 2 == 1800
    assert hw.quantize_(hw.cnn(25), 4) == 3074  # issue 13's "about 3.1 KB"
    for w0, m in zip(before, [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]):
        w = m.weight.reshape(len(m.weight), -1)
        assert len(torch.unique(w[0])) <= 256  # at most 2**8 levels per channel
        step = (w0.reshape(len(w0), -1).amax(1) - w0.reshape(len(w0), -1).amin(1)) / 255
        assert bool(((w - w0.reshape(len(w0), -1)).abs() <= step[:, None] / 2 + 1e-3).all())


def test_search_example_gives_plain_tune_the_same_space():
    from slimtune.spaces import parse_spec

    bench = _script("search_example")
    raw = bench.slimtune_spec(seed=2, quick=False)
    plain = parse_spec(bench.plain_spec(raw))
    slim = parse_spec(raw)
    assert plain.search.promote is None and not plain.search.ladder
    assert plain.task.epochs.values == tuple(slim.search.promote.rungs)  # the rungs become a searched budget
    assert dict(plain.space) == dict(slim.space) and plain.compress == slim.compress
    assert plain.search.seed == slim.search.seed == 2 and raw["search"]["promote"]  # raw left unchanged


def test_search_example_scores_only_rows_finished_by_the_budget():
    bench = _script("search_example")
    df = pd.DataFrame({"t_end": [10.0, 20.0, 30.0], "status": ["ok", "ok", "ok"], "parent": [None, None, None],
                       "accuracy": [0.8, 0.9, 0.99], "test_accuracy": [0.7, 0.85, 0.99],
                       "size_bytes": [900, 1500, 1200]})
    m = bench.measure(bench._bench(), df, wall=30.0, budget=20.0)
    assert m["ok_rows_at_T"] == 2 and m["trainings"] == 3
    assert m["test_le2000"] == 0.85 and m["bytes_le1000"] == 900  # the 30 s row came too late
    assert m["hv_log_T1"] > m["hv_log_T0.5"] > 0 and m["hv_log_T0.25"] == 0
