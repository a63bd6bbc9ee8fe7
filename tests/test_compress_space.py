"""The spec's `compress:` section: parsing and errors of every key, conditional sampling
with a real Optuna study (no Ray), and the configs a trial builds from a sample."""

from __future__ import annotations

import copy
from typing import Any

import optuna
import pytest

from slimtune import compress
from slimtune.search.trial import compression_configs
from slimtune.spaces import METHODS, Choice, Fixed, IntRange, LogUniform, SpecError, parse_spec

MINIMAL: dict[str, Any] = {"name": "t", "task": {"dataset": "digits", "model": "mlp", "epochs": 1}}


def spec(**compress_section: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw["compress"] = compress_section
    return raw


# ------------------------------------------------------------------ parsing


def test_new_keys_parse_to_typed_params() -> None:
    s = parse_spec(spec(
        prune={"method": {"choice": ["none", "magnitude", "structured"]}, "threshold": {"log_uniform": [1e-3, 0.1]},
               "sparsity": {"uniform": [0.2, 0.8]}, "scope": {"choice": ["global", "layer"]},
               "finetune_epochs": {"int": [0, 3]}, "gradual": {"choice": [True, False]}},
        quantize={"bits": {"choice": [32, 8, 6, 4, 3, 2]}, "mode": {"choice": ["ptq", "qat"]},
                  "qat_epochs": {"int": [1, 2]}},
    ))
    assert s.prune.method == Choice(("none", "magnitude", "structured"))
    assert s.prune.threshold == LogUniform(1e-3, 0.1)
    assert s.prune.scope == Choice(("global", "layer")) and s.prune.gradual == Choice((True, False))
    assert s.quantize.mode == Choice(("ptq", "qat")) and s.quantize.qat_epochs == IntRange(1, 2)


def test_defaults_of_the_new_keys() -> None:
    s = parse_spec(spec(prune={"method": "structured"}, quantize={"bits": 4}))
    assert s.prune.method == Fixed("structured") and s.prune.sparsity == Fixed(0.5)
    assert s.prune.threshold is None and s.prune.scope == Fixed("global") and s.prune.gradual == Fixed(False)
    assert s.quantize.mode == Fixed("ptq") and s.quantize.qat_epochs == Fixed(1)


def test_single_value_method_choice_keeps_the_other_keys() -> None:
    s = parse_spec(spec(prune={"method": {"choice": ["magnitude"]}, "threshold": 0.01, "gradual": True,
                               "finetune_epochs": 2}))
    assert s.prune.method == Fixed("magnitude")
    assert (s.prune.threshold, s.prune.gradual, s.prune.finetune_epochs) == (Fixed(0.01), Fixed(True), Fixed(2))


BAD = [
    (dict(prune={"method": "lottery"}), "compress.prune.method", "'lottery'", "structured"),
    (dict(prune={"method": "magnitude", "threshold": -0.1}), "compress.prune.threshold", "-0.1", ">= 0"),
    (dict(prune={"method": "magnitude", "threshold": {"uniform": [0.0, float("inf")]}}), "compress.prune.threshold",
     "inf", None),
    (dict(prune={"method": "structured", "threshold": 0.1}), "compress.prune.threshold", "0.1", "magnitude"),
    (dict(prune={"method": "magnitude", "threshold": 0.1, "sparsity": 0.5}), "compress.prune.sparsity", "0.5",
     "remove sparsity or threshold"),
    (dict(prune={"method": "magnitude", "scope": "row"}), "compress.prune.scope", "'row'", "global, layer"),
    (dict(prune={"method": "structured", "scope": "layer"}), "compress.prune.scope", "'layer'", "magnitude"),
    (dict(prune={"method": "magnitude", "gradual": "yes"}), "compress.prune.gradual", "'yes'", "true or false"),
    (dict(prune={"method": "none", "gradual": True}), "compress.prune.gradual", "got true", "magnitude"),
    (dict(prune={"method": "magnitude", "gradul": True}), "compress.prune.gradul", "'gradul'", "gradual"),
    (dict(quantize={"bits": 4, "mode": "qta"}), "compress.quantize.mode", "'qta'", "ptq, qat"),
    (dict(quantize={"bits": 4, "qat_epochs": 2}), "compress.quantize.qat_epochs", "2", "mode is qat"),
    (dict(quantize={"bits": 4, "mode": "qat", "qat_epochs": 0}), "compress.quantize.qat_epochs", "0", ">= 1"),
    (dict(quantize={"bits": 4, "mode": "qat", "qat_epochs": 1.5}), "compress.quantize.qat_epochs", "1.5", None),
    (dict(quantize={"bits": 4, "qat_epoch": 1}), "compress.quantize.qat_epoch", "'qat_epoch'", "qat_epochs"),
]


@pytest.mark.parametrize("section, field, shown, extra", BAD, ids=[b[1] + "-" + b[2] for b in BAD])
def test_bad_compress_keys_raise_one_line_spec_errors(section: dict, field: str, shown: str, extra: str | None) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec(**section))
    msg = str(info.value)
    assert info.value.field == field and msg.startswith(field + ":")
    assert shown in msg and "\n" not in msg
    if extra:
        assert extra in msg


# ------------------------------------------------------ conditional sampling

SEARCH = spec(
    prune={"method": {"choice": ["none", "magnitude", "structured"]}, "sparsity": {"uniform": [0.2, 0.9]},
           "threshold": {"log_uniform": [1e-3, 0.1]}, "scope": {"choice": ["global", "layer"]},
           "finetune_epochs": {"int": [0, 2]}, "gradual": {"choice": [True, False]}},
    quantize={"bits": {"choice": [32, 8, 6, 4, 3, 2]}, "per_channel": {"choice": [True, False]},
              "mode": {"choice": ["ptq", "qat"]}, "qat_epochs": {"int": [1, 3]}},
)


@pytest.fixture(scope="module")
def asks() -> list[tuple[dict, dict]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = parse_spec(SEARCH)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(80):
        trial = study.ask()
        cfg = s.sample(trial)
        out.append((cfg, dict(trial.params)))
        study.tell(trial, 0.0)
    return out


def test_parameters_are_drawn_only_where_they_apply(asks) -> None:
    assert {c["prune_method"] for c, _ in asks} == {"none", "magnitude", "structured"}
    assert {c.get("quant_mode") for c, _ in asks} == {None, "ptq", "qat"}
    assert any(c.get("gradual") is True for c, _ in asks)
    for cfg, params in asks:
        method = cfg["prune_method"]
        assert ("threshold" in cfg) is (method == "magnitude")  # the spec sets a threshold
        assert ("sparsity" in cfg) is (method == "structured")
        assert ("scope" in cfg) is (method == "magnitude")
        assert ("finetune_epochs" in cfg) is (method != "none")
        assert ("gradual" in cfg) is (method == "magnitude" and cfg["finetune_epochs"] > 0)
        quantized = cfg["bits"] < 32
        assert ("quant_mode" in cfg) is quantized and ("per_channel" in cfg) is quantized
        assert ("qat_epochs" in cfg) is (cfg.get("quant_mode") == "qat")
        assert set(params) <= set(cfg) and all(cfg[k] == v for k, v in params.items())
        assert set(cfg) - {"lr", "batch_size", "depth", "width", "weight_decay"} <= {
            "epochs", *(c for method in METHODS.values() for c in method.columns)}


def test_sampled_configs_build_the_right_compression(asks) -> None:
    for cfg, _ in asks:
        prune, qat, quant = compression_configs(cfg)
        method = cfg["prune_method"]
        if method == "magnitude":
            assert prune == [compress.MagnitudePrune(threshold=cfg["threshold"], scope=cfg["scope"])]
        elif method == "structured":
            assert prune == [compress.StructuredPrune(ratio=cfg["sparsity"])]
        else:
            assert prune == []
        if cfg["bits"] == 32:
            assert qat == quant == []
        else:
            fields = dict(bits=cfg["bits"], per_channel=cfg["per_channel"], symmetric=cfg["symmetric"])
            assert quant == [compress.AffineQuantize(**fields)]
            assert qat == ([compress.FakeQuantize(**fields)] if cfg["quant_mode"] == "qat" else [])


def test_sparsity_is_used_for_magnitude_without_a_threshold() -> None:
    s = parse_spec(spec(prune={"method": "magnitude", "sparsity": 0.7, "scope": "layer"}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cfg = s.sample(study.ask())
    assert cfg["sparsity"] == 0.7 and "threshold" not in cfg and cfg["scope"] == "layer"
    assert "gradual" not in cfg  # finetune_epochs is 0
    assert compression_configs(cfg)[0] == [compress.MagnitudePrune(sparsity=0.7, scope="layer")]
