"""Tests for `spaces`: every bad spec gives one line naming the field and the value,
the shipped examples parse, conditional sampling with a real Optuna study, and lean imports."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from slimtune import spaces
from slimtune.spaces import Bound, Choice, Fixed, IntRange, LogUniform, SpecError, Uniform, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

#: The smallest valid spec; every bad case below breaks one thing in a copy of it.
MINIMAL: dict[str, Any] = {"name": "t", "task": {"dataset": "digits", "model": "mlp", "epochs": 1}}

_DELETE = object()


def spec(**sets: Any) -> dict[str, Any]:
    """A copy of MINIMAL with dotted paths set (``task__kind="regression"`` sets task.kind)."""
    raw = copy.deepcopy(MINIMAL)
    for dotted, value in sets.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return raw


def magnitude(**prune: Any) -> dict[str, Any]:
    return {"prune": {"method": "magnitude", **prune}}


def quant(**q: Any) -> dict[str, Any]:
    return {"quantize": q}


# (raw spec, field path, text of the offending value that must appear, extra text or None)
BAD_SPECS = [
    # unknown keys: the closest known key is suggested
    pytest.param(spec(objectvies={"accuracy": "max"}), "objectvies", "'objectvies'", "did you mean 'objectives'",
                 id="unknown-top-key"),
    pytest.param(spec(task__modle="cnn"), "task.modle", "'modle'", "did you mean 'model'", id="unknown-task-key"),
    pytest.param(spec(space={"widht": 32}), "space.widht", "'widht'", "did you mean 'width'",
                 id="unknown-space-key-builtin-model"),
    pytest.param(spec(search={"trails": 5}), "search.trails", "'trails'", "did you mean 'trials'",
                 id="unknown-search-key"),
    pytest.param(spec(resources={"cpus": 2}), "resources.cpus", "'cpus'", "did you mean 'cpu'",
                 id="unknown-resources-key"),
    pytest.param(spec(compress={"cluster": {}}), "compress.cluster", "'cluster'", None, id="unknown-compress-key"),
    # wrong types
    pytest.param(["digits"], "spec", "['digits']", "mapping", id="spec-not-a-mapping"),
    pytest.param(spec(name=123), "name", "got 123", None, id="name-not-a-string"),
    pytest.param(spec(task="digits"), "task", "'digits'", "mapping", id="task-not-a-mapping"),
    pytest.param(spec(task__epochs="ten"), "task.epochs", "'ten'", None, id="epochs-string"),
    pytest.param(spec(task__epochs={"uniform": [1, 5]}), "task.epochs", "{uniform: [1, 5]}", None,
                 id="epochs-float-distribution"),
    pytest.param(spec(space={"batch_size": {"uniform": [16, 64]}}), "space.batch_size", "{uniform: [16, 64]}", None,
                 id="batch-size-float-distribution"),
    pytest.param(spec(compress=quant(bits=8, per_channel="yes")), "compress.quantize.per_channel", "'yes'", None,
                 id="per-channel-string"),
    pytest.param(spec(search={"trials": "ten"}), "search.trials", "'ten'", None, id="trials-string"),
    pytest.param(spec(resources={"cpu": "two"}), "resources.cpu", "'two'", None, id="cpu-string"),
    pytest.param(spec(objectives=["accuracy"]), "objectives", "['accuracy']", "mapping", id="objectives-list"),
    pytest.param(spec(constraints={"size_bytes": 100}), "constraints.size_bytes", "got 100", "mapping",
                 id="constraint-not-a-mapping"),
    pytest.param(spec(constraints={"size_bytes": {"max": "big"}}), "constraints.size_bytes.max", "'big'", None,
                 id="constraint-bound-string"),
    pytest.param(spec(compress=quant(bits=True)), "compress.quantize.bits", "got true", None, id="bits-bool"),
    # distributions
    pytest.param(spec(space={"width": {"choice": []}}), "space.width", "[]", "non-empty", id="empty-choice"),
    pytest.param(spec(space={"width": {"choice": [32, None]}}), "space.width", "None", None, id="choice-none"),
    pytest.param(spec(space={"width": {"choice": [32, 32]}}), "space.width", "[32, 32]", "distinct",
                 id="choice-duplicates"),
    pytest.param(spec(space={"lr": {"log_uniform": [0.1, 0.01]}}), "space.lr", "{low: 0.1, high: 0.01}",
                 "low <= high", id="low-above-high"),
    pytest.param(spec(space={"lr": {"log_uniform": [0.0, 0.1]}}), "space.lr", "got 0.0", "use uniform",
                 id="log-uniform-touching-zero"),
    pytest.param(spec(space={"width": {"int_log": [0, 64]}}), "space.width", "got 0", None,
                 id="int-log-touching-zero"),
    pytest.param(spec(space={"width": {"int": [1.5, 4]}}), "space.width", "[1.5, 4]", "integers",
                 id="int-non-integer-bounds"),
    pytest.param(spec(space={"lr": {"normal": [0, 1]}}), "space.lr", "{normal: [0, 1]}", None,
                 id="unknown-distribution"),
    pytest.param(spec(space={"lr": {"uniform": [0.1, 0.2], "choice": [0.1]}}), "space.lr",
                 "{uniform: [0.1, 0.2], choice: [0.1]}", "exactly one", id="two-distributions"),
    pytest.param(spec(space={"lr": {"uniform": [0.1]}}), "space.lr", "[0.1]", "[low, high]",
                 id="uniform-one-bound"),
    pytest.param(spec(space={"lr": float("nan")}), "space.lr", "nan", "finite", id="fixed-nan"),
    pytest.param(spec(space={"lr": 0}), "space.lr", "got 0", "> 0", id="lr-zero"),
    pytest.param(spec(space={"weight_decay": -0.1}), "space.weight_decay", "-0.1", None, id="weight-decay-negative"),
    pytest.param(spec(space={"width": 0}), "space.width", "got 0", None, id="width-zero"),
    pytest.param(spec(task__model="tests.user_models:residual_mlp", space={"bad-name": 1}), "space.bad-name",
                 "'bad-name'", "identifier", id="hook-space-name-not-identifier"),
    # compression
    pytest.param(spec(compress=magnitude(sparsity=1.0)), "compress.prune.sparsity", "got 1.0", "0 <= sparsity < 1",
                 id="sparsity-one"),
    pytest.param(spec(compress=magnitude(sparsity=-0.1)), "compress.prune.sparsity", "-0.1", None,
                 id="sparsity-negative"),
    pytest.param(spec(compress=magnitude(sparsity={"uniform": [0.5, 1.2]})), "compress.prune.sparsity", "1.2",
                 None, id="sparsity-range-above-one"),
    pytest.param(spec(compress={"prune": {"method": "none", "sparsity": 0.5}}), "compress.prune.sparsity",
                 "got 0.5", "method", id="sparsity-without-pruning"),
    pytest.param(spec(compress=magnitude(finetune_epochs=-1)), "compress.prune.finetune_epochs", "-1", None,
                 id="finetune-epochs-negative"),
    pytest.param(spec(compress={"prune": {"method": "random"}}), "compress.prune.method", "'random'", "magnitude",
                 id="unknown-prune-method"),
    pytest.param(spec(compress=quant(bits=16)), "compress.quantize.bits", "got 16", "2..8", id="bits-16"),
    pytest.param(spec(compress=quant(bits=1)), "compress.quantize.bits", "got 1", "2..8", id="bits-1"),
    pytest.param(spec(compress=quant(bits={"choice": [8, 16]})), "compress.quantize.bits", "{choice: [8, 16]}", None,
                 id="bits-choice-with-16"),
    pytest.param(spec(compress=quant(bits={"int": [4, 32]})), "compress.quantize.bits", "{int: [4, 32]}", "choice",
                 id="bits-int-range"),
    # objectives and constraints
    pytest.param(spec(objectives={"acc": "max"}), "objectives.acc", "'acc'", "did you mean 'accuracy'",
                 id="objective-unknown-metric"),
    pytest.param(spec(objectives={"accuracy": "maximize"}), "objectives.accuracy", "'maximize'", "max or min",
                 id="objective-wrong-direction"),
    pytest.param(spec(objectives={}), "objectives", "{}", "at least one", id="objectives-empty"),
    pytest.param(spec(task__kind="regression", objectives={"accuracy": "max"}), "objectives.accuracy",
                 "'accuracy'", "use r2", id="accuracy-on-regression"),
    pytest.param(spec(task__kind="classification", objectives={"r2": "max"}), "objectives.r2", "'r2'",
                 "use accuracy", id="r2-on-classification"),
    pytest.param(spec(constraints={"size": {"max": 100}}), "constraints.size", "'size'", "size_bytes",
                 id="constraint-unknown-metric"),
    pytest.param(spec(constraints={"size_bytes": {"min": 100, "max": 10}}), "constraints.size_bytes",
                 "{min: 100, max: 10}", "min <= max", id="constraint-min-above-max"),
    pytest.param(spec(constraints={"size_bytes": {}}), "constraints.size_bytes", "{}", None,
                 id="constraint-empty"),
    # name, search, resources
    pytest.param(spec(name="my sweep!"), "name", "'my sweep!'", None, id="name-bad-characters"),
    pytest.param(spec(name="a" * 65), "name", "a" * 65, None, id="name-too-long"),
    pytest.param(spec(search={"trials": 0}), "search.trials", "got 0", ">= 1", id="trials-zero"),
    pytest.param(spec(search={"concurrency": 0}), "search.concurrency", "got 0", None, id="concurrency-zero"),
    pytest.param(spec(search={"seed": -1}), "search.seed", "-1", None, id="seed-negative"),
    pytest.param(spec(search={"sampler": "cmaes"}), "search.sampler", "'cmaes'", "tpe", id="unknown-sampler"),
    pytest.param(spec(resources={"cpu": -1}), "resources.cpu", "-1", "> 0", id="cpu-negative"),
    pytest.param(spec(resources={"gpu": -0.5}), "resources.gpu", "-0.5", None, id="gpu-negative"),
    # task
    pytest.param(spec(task=_DELETE), "task", "None", "add task", id="task-missing"),
    pytest.param(spec(task__dataset=_DELETE), "task.dataset", "None", "required", id="dataset-missing"),
    pytest.param(spec(task__dataset="data/train.parquet"), "task.dataset", "'data/train.parquet'", "module:function",
                 id="dataset-unknown-kind"),
    pytest.param(spec(task__model="resnet"), "task.model", "'resnet'", None, id="unknown-model"),
    pytest.param(spec(task__kind="clustering"), "task.kind", "'clustering'", None, id="unknown-kind"),
    pytest.param(spec(task__validation_split=1.5), "task.validation_split", "1.5", None,
                 id="validation-split-above-one"),
    pytest.param(spec(task__test_split=0), "task.test_split", "got 0", None, id="test-split-zero"),
    pytest.param(spec(task__target="label"), "task.target", "'label'", ".csv", id="target-on-builtin-dataset"),
    pytest.param(spec(task__dataset="data.npz", task__target="label"), "task.target", "'label'", ".csv",
                 id="target-on-npz-dataset"),
    # mixed precision: per-layer widths in 2..8, the assignment by name, only with bits < 32
    pytest.param(spec(compress=quant(bits=4, bits_first=9)), "compress.quantize.bits_first", "got 9", "2..8",
                 id="bits-first-9"),
    pytest.param(spec(compress=quant(bits=4, bits_last={"int": [2, 16]})), "compress.quantize.bits_last",
                 "{int: [2, 16]}", "2..8", id="bits-last-range-beyond-8"),
    pytest.param(spec(compress=quant(bits=4, bits_first=4.5)), "compress.quantize.bits_first", "got 4.5", None,
                 id="bits-first-float"),
    pytest.param(spec(compress=quant(bits_first=8)), "compress.quantize.bits_first", "got 8", "bits < 32",
                 id="bits-first-without-quantization"),
    pytest.param(spec(compress=quant(bits=4, assign="auto")), "compress.quantize.assign", "'auto'", "sensitivity",
                 id="assign-unknown"),
    pytest.param(spec(compress=quant(bits={"choice": [32]}, assign="sensitivity")), "compress.quantize.assign",
                 "'sensitivity'", "bits < 32", id="assign-without-quantization"),
]


def test_bad_spec_table_is_large_enough():
    assert len(BAD_SPECS) >= 25
    assert parse_spec(MINIMAL).name == "t"  # the base of every bad case is itself valid


@pytest.mark.parametrize("raw, field, value, extra", BAD_SPECS)
def test_bad_spec_gives_one_line_with_field_and_value(raw, field, value, extra):
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{field}: "), msg
    assert info.value.field == field
    assert value in msg, msg
    if extra is not None:
        assert extra in msg, msg


def test_name_with_trailing_newline_is_rejected():
    with pytest.raises(SpecError) as info:
        parse_spec(spec(name="abc\n"))
    assert info.value.field == "name"


def test_hook_space_name_with_trailing_newline_is_rejected():
    with pytest.raises(SpecError) as info:
        parse_spec(spec(task__model="tests.user_models:residual_mlp", space={"x\n": 1}))
    assert info.value.field.startswith("space.")


def test_unknown_key_with_newline_still_gives_one_line():
    with pytest.raises(SpecError) as info:
        parse_spec(spec(**{"bad\nkey": 1}))
    assert "\n" not in str(info.value)


def test_spec_error_is_a_value_error_with_rule_and_fix():
    err = SpecError("space.lr", "`low <= high` must hold", {"low": 0.1, "high": 0.01}, "swap them")
    assert isinstance(err, ValueError)
    assert str(err) == "space.lr: `low <= high` must hold, but got {low: 0.1, high: 0.01}; swap them"


# ---------------------------------------------------------------------------------------
# Files


def test_load_spec_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: {dataset: digits}\nobjectives: accuracy: max\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert info.value.field == "spec"
    assert msg.startswith("spec: ")
    assert "line 3" in msg, msg


def test_load_spec_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert info.value.field == "spec"
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_spec_empty_file_is_not_a_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "spec"


@pytest.mark.parametrize("name", ["digits.yaml", "mnist1d.yaml"])
def test_shipped_examples_parse(name):
    s = load_spec(ROOT / "examples" / name)
    assert s.metric_names == ["accuracy", "size_bytes"]
    assert s.modes == ["max", "min"]
    assert isinstance(s.prune.method, Choice) and set(s.prune.method.values) == {"none", "magnitude"}
    assert isinstance(s.quantize.bits, Choice)
    # digits keeps fp32 models in its space; mnist1d searches under 4 KB, where only quantized ones fit
    assert (32 in s.quantize.bits.values) == (name == "digits.yaml")
    assert isinstance(dict(s.space)["lr"], LogUniform)
    assert s.search.seed == 0


def test_defaults_of_minimal_spec():
    s = parse_spec(MINIMAL)
    assert s.metric_names == ["accuracy", "size_bytes"]
    assert s.modes == ["max", "min"]
    assert s.prune.method == Fixed("none")
    assert s.quantize.bits == Fixed(32)
    assert dict(s.space)["lr"] == Fixed(1e-3)
    assert s.task.epochs == Fixed(1)
    assert s.constraints == ()
    assert parse_spec(spec(task__kind="regression")).metric_names == ["r2", "size_bytes"]


def test_prune_settings_without_method_mean_magnitude():
    s = parse_spec(spec(compress={"prune": {"sparsity": 0.7}}))
    assert s.prune.method == Fixed("magnitude")
    assert s.prune.sparsity == Fixed(0.7)


def test_single_value_method_choice_becomes_fixed():
    s = parse_spec(spec(compress={"prune": {"method": {"choice": ["magnitude"]}}}))
    assert s.prune.method == Fixed("magnitude")


# ---------------------------------------------------------------------------------------
# Conditional sampling with a real Optuna study

SEARCH_SPEC = spec(
    task__epochs=2,
    space={"lr": {"log_uniform": [1e-4, 1e-1]}, "depth": {"int": [1, 3]}, "width": {"choice": [16, 32, 64]}},
    compress={
        "prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.2, 0.9]},
                  "finetune_epochs": {"int": [0, 3]}},
        "quantize": {"bits": {"choice": [32, 8, 4]}, "per_channel": {"choice": [True, False]},
                     "symmetric": {"choice": [True, False]}},
    },
)
PRUNE_ONLY = {"sparsity", "finetune_epochs"}
QUANT_ONLY = {"per_channel", "symmetric"}
FIXED = {"epochs": 2, "batch_size": 64, "weight_decay": 0.0}


def _asks(seed: int, n: int) -> list[tuple[dict, dict]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = parse_spec(SEARCH_SPEC)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=10))
    out = []
    for _ in range(n):
        trial = study.ask()
        cfg = s.sample(trial)
        out.append((cfg, dict(trial.params)))
        study.tell(trial, cfg["lr"] * (1 - cfg.get("sparsity", 0.0)))
    return out


@pytest.fixture(scope="module")
def fifty_asks():
    return _asks(seed=7, n=50)


def test_conditional_parameters_present_only_where_they_apply(fifty_asks):
    seen_prune = {cfg["prune_method"] for cfg, _ in fifty_asks}
    seen_bits = {cfg["bits"] for cfg, _ in fifty_asks}
    assert seen_prune == {"none", "magnitude"}  # both branches were exercised
    assert 32 in seen_bits and seen_bits & {8, 4}
    for cfg, params in fifty_asks:
        pruned = cfg["prune_method"] != "none"
        quantized = cfg["bits"] < 32
        assert (PRUNE_ONLY <= set(cfg)) is pruned and (PRUNE_ONLY <= set(params)) is pruned
        if not pruned:
            assert not PRUNE_ONLY & set(cfg) and not PRUNE_ONLY & set(params)
        assert (QUANT_ONLY <= set(cfg)) is quantized and (QUANT_ONLY <= set(params)) is quantized
        if not quantized:
            assert not QUANT_ONLY & set(cfg) and not QUANT_ONLY & set(params)
        # every drawn value is reported under the same name
        assert all(cfg[k] == v for k, v in params.items())


def test_fixed_values_are_returned_but_not_suggested(fifty_asks):
    for cfg, params in fifty_asks:
        for name, value in FIXED.items():
            assert cfg[name] == value
            assert name not in params
        assert {"lr", "depth", "width", "prune_method", "bits"} <= set(params)


def test_sampled_values_stay_inside_their_bounds(fifty_asks):
    for cfg, _ in fifty_asks:
        assert 1e-4 <= cfg["lr"] <= 1e-1
        assert cfg["depth"] in (1, 2, 3) and isinstance(cfg["depth"], int)
        assert cfg["width"] in (16, 32, 64)
        assert cfg["bits"] in (32, 8, 4)
        if "sparsity" in cfg:
            assert 0.2 <= cfg["sparsity"] <= 0.9
            assert cfg["finetune_epochs"] in range(0, 4)
        if "per_channel" in cfg:
            assert cfg["per_channel"] in (True, False) and cfg["symmetric"] in (True, False)


def test_same_sampler_seed_same_sequence():
    a, b, c = _asks(seed=3, n=15), _asks(seed=3, n=15), _asks(seed=4, n=15)
    assert [cfg for cfg, _ in a] == [cfg for cfg, _ in b]
    assert [cfg for cfg, _ in a] != [cfg for cfg, _ in c]


def test_suggest_maps_each_distribution_to_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = {"u": Uniform(0.0, 1.0), "lu": LogUniform(1e-3, 1.0), "i": IntRange(1, 5),
              "il": IntRange(1, 64, log=True), "c": Choice(("a", "b")), "f": Fixed(3)}
    got = {name: spaces.suggest(trial, name, p) for name, p in params.items()}
    dists = trial.distributions
    assert set(dists) == {"u", "lu", "i", "il", "c"}
    assert isinstance(dists["lu"], optuna.distributions.FloatDistribution) and dists["lu"].log
    assert isinstance(dists["il"], optuna.distributions.IntDistribution) and dists["il"].log
    assert not dists["i"].log
    assert got["f"] == 3


@pytest.mark.parametrize("raw", [3, 0.5, "x", True, {"uniform": [0.0, 1.0]}, {"log_uniform": [0.001, 0.1]},
                                 {"int": [1, 4]}, {"int_log": [1, 64]}, {"choice": [16, "a", False]}])
def test_param_json_round_trip(raw):
    p = spaces.parse_param("x", raw)
    assert spaces.parse_param("x", spaces.to_json(p)) == p


# ---------------------------------------------------------------------------------------
# Constraints


@pytest.mark.parametrize(
    "bound, value, expected",
    [
        (Bound("size_bytes", max=100.0), 80.0, -20.0),
        (Bound("size_bytes", max=100.0), 100.0, 0.0),
        (Bound("size_bytes", max=100.0), 130.0, 30.0),
        (Bound("accuracy", min=0.9), 0.95, -0.05),
        (Bound("accuracy", min=0.9), 0.8, 0.1),
        (Bound("accuracy", min=0.2, max=0.6), 0.5, -0.1),
        (Bound("accuracy", min=0.2, max=0.6), 0.1, 0.1),
        (Bound("accuracy", min=0.2, max=0.6), 0.7, 0.1),
    ],
)
def test_bound_violation_sign(bound, value, expected):
    v = bound.violation(value)
    assert v == pytest.approx(expected)
    assert (v <= 0) == (expected <= 0)  # <= 0 means satisfied


# ---------------------------------------------------------------------------------------
# Lean imports


def _loaded_after(module: str, candidates: tuple[str, ...]) -> list[str]:
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {candidates!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_spaces_is_lean():
    assert _loaded_after("slimtune.spaces", ("torch", "ray", "optuna")) == []


def test_import_compress_never_loads_ray_optuna_pandas():
    assert _loaded_after("slimtune.compress", ("ray", "optuna", "pandas")) == []


def test_mixed_precision_keys_are_drawn_only_when_quantized_and_set():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = parse_spec(spec(compress=quant(bits={"choice": [32, 4]}, bits_first={"choice": [6, 8]}, bits_last=8,
                                       assign={"choice": ["manual", "sensitivity"]})))
    assert {"quantize.bits_first", "quantize.assign"} <= set(s.searched)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        cfg = s.sample(trial)
        mixed = {"bits_first", "bits_last", "bits_assign"}
        assert (mixed <= set(cfg)) is (cfg["bits"] < 32) and (mixed & set(cfg) == set()) is (cfg["bits"] == 32)
        if cfg["bits"] < 32:
            assert cfg["bits_first"] in (6, 8) and cfg["bits_last"] == 8 and "bits_last" not in trial.params
            seen.add(cfg["bits_assign"])
        study.tell(trial, 0.0)
    assert seen == {"manual", "sensitivity"}
    plain = parse_spec(spec(compress=quant(bits=4)))  # not set: not drawn, rows as before
    assert plain.quantize.bits_first is None and plain.quantize.assign is None
