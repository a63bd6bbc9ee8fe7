"""A compression method and a metric are each declared once; everything else derives.

A toy method (round weights to a multiple of ``step``: tests/user_methods.py, a frozen config
and its registered function) gets its one spec key from one ``MethodKeys``; a toy metric
(``weight_l1``, minimised, computed by its ``compute`` hook) is one ``Metric`` line. Both are
declared here, not in the library, and removed after: validation, sampling, the result columns,
the trial function and the objectives follow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimtune import compress
from slimtune.cli import main
from slimtune.search import load_results, pareto_front
from slimtune.search.results.rows import param_names
from slimtune.spaces import METHODS, METRIC_TABLE, METRICS, Key, MethodKeys, Metric, SpecError, declare, parse_spec

ROUND = MethodKeys("round", (Key("step", "float", None, low=0, low_open=True, column="round_step", field="step"),),
                   config="tests.user_methods:RoundWeights", doc="round weights to a multiple of step")
WEIGHT_L1 = Metric("weight_l1", "min", "sum of |w| of the compressed model", compute="tests.user_methods:weight_l1")


def spec(**compress_: dict) -> dict:
    return {
        "name": "declared-once",
        "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
        "objectives": {"accuracy": "max", "weight_l1": "min"},
        "space": {"lr": 0.01, "batch_size": 64, "depth": 1, "width": 16},
        "compress": compress_,
        "search": {"trials": 2, "concurrency": 2, "sampler": "random", "seed": 1},
    }


@pytest.fixture
def declared():
    with declare(ROUND, WEIGHT_L1):
        yield
    assert "round" not in METHODS and "weight_l1" not in METRIC_TABLE and "weight_l1" not in METRICS


def test_without_the_declarations_the_key_and_the_metric_are_unknown():
    with pytest.raises(SpecError) as e:
        parse_spec(spec(round={"step": 0.1}))
    assert e.value.field == "objectives.weight_l1"
    s = spec(round={"step": 0.1})
    s["objectives"] = {"accuracy": "max"}
    with pytest.raises(SpecError) as e:
        parse_spec(s)
    assert e.value.field == "compress.round"


def test_a_name_is_declared_once():
    with declare(ROUND):
        with pytest.raises(ValueError, match="declared already"):
            declare(MethodKeys("round2", (Key("step", "float", 0.1, low=0, column="round_step"),)))
        with pytest.raises(ValueError, match="declared already"):
            declare(Metric("accuracy", "max"))


@pytest.mark.parametrize("raw, field, shown", [
    ({"step": -0.1}, "compress.round.step", "-0.1"),
    ({"step": {"choice": [0.1, 0]}}, "compress.round.step", "0"),
    ({"step": "big"}, "compress.round.step", "'big'"),
    ({"stpe": 0.1}, "compress.round.stpe", "step"),
])
def test_the_toy_key_is_validated_where_the_spec_enters(declared, raw, field, shown, tmp_path, capsys):
    with pytest.raises(SpecError) as e:
        parse_spec(spec(round=raw))
    assert e.value.field == field and shown in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec(round=raw)))
    assert main(["sweep", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err
    assert not (tmp_path / "run").exists()


def test_the_toy_key_is_sampled_where_written(declared):
    import optuna

    s = parse_spec(spec(round={"step": {"choice": [0.05, 0.1]}}))
    assert "round.step" in s.searched and s.section("round").step is not None
    assert param_names(s)[-1] == "round_step"
    cfg = s.sample(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    assert cfg["round_step"] in (0.05, 0.1)
    assert "round_step" not in parse_spec(spec()).sample(optuna.create_study().ask())  # not written: not drawn


@pytest.mark.slow  # a real 2-trial sweep: ~35 s on a shared machine
def test_a_sweep_with_the_toy_method_and_metric(declared, ray_session, tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(round={"step": {"choice": [0.05, 0.1]}})))
    out = tmp_path / "run"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert len(df) == 2 and (df["status"] == "ok").all(), df["error"].tolist()
    assert df.attrs["objectives"] == {"accuracy": "max", "weight_l1": "min"}
    assert "round_step" in json.loads((out / "sweep.json").read_text())["params"]
    assert set(df["round_step"]) <= {0.05, 0.1}
    assert len(pareto_front(df)) >= 1
    for _, row in df.iterrows():
        model = compress.load(out / row["artifact"])
        weights = [m.weight.detach() for _, m in compress.prunable_modules(model)]
        step = float(row["round_step"])
        for w in weights:  # the declared method ran in the trial
            assert torch.allclose(w / step, torch.round(w / step), atol=1e-3)
        l1 = float(sum(w.abs().sum() for w in weights))
        assert np.isfinite(row["weight_l1"]) and row["weight_l1"] == pytest.approx(l1, rel=1e-5)


def test_the_bits_rule_of_the_declaration_is_the_one_compress_enforces():
    """compress may not import spaces (a standalone library), so AffineQuantize checks bits
    itself; the declaration must accept exactly the widths compress quantizes to, and 32."""
    from slimtune.spaces import QUANTIZE

    bits = QUANTIZE.key("bits")
    for b in range(40):
        try:
            compress.AffineQuantize(bits=b)
            accepted = True
        except ValueError:
            accepted = False
        assert bits.ok(b) == (accepted or b == 32), b
