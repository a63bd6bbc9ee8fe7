"""Tests for `compress`: one contract suite over every method and model, then
numerics, properties (hypothesis), sizes, errors and import hygiene."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import compress
from compress import AffineQuantize, MagnitudePrune, StructuredPrune
from compress._artifact import _varint_decode, _varint_encode, pack_bits, unpack_bits
from compress._quantize import choose_qparams, dequantize, quantize

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "mlp": {"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 2, "width": 32},
    "cnn1d": {"arch": "cnn", "input_shape": [40], "output_dim": 10, "depth": 3, "width": 8},
    "cnn2d": {"arch": "cnn", "input_shape": [8, 8], "output_dim": 10, "depth": 2, "width": 8},
    "hook_residual": {
        "arch": "hook",
        "hook": "tests.user_models:residual_mlp",
        "config": {"in_dim": 64, "hidden": 32, "out_dim": 1, "blocks": 2},
        "input_shape": [64],
        "output_dim": 1,
        "depth": 2,
        "width": 32,
    },
}

METHODS = {
    "prune_sparsity": (MagnitudePrune(sparsity=0.7),),
    "prune_threshold": (MagnitudePrune(threshold=0.05),),
    "prune_layer": (MagnitudePrune(sparsity=0.5, scope="layer"),),
    "prune_zero": (MagnitudePrune(sparsity=0.0),),
    **{
        f"quant{b}_{'chan' if pc else 'tensor'}_{'sym' if sym else 'asym'}": (
            AffineQuantize(bits=b, per_channel=pc, symmetric=sym),
        )
        for b, pc, sym in [
            (2, True, False), (3, False, True), (4, True, False), (4, True, True),
            (4, False, False), (4, False, True), (5, True, True), (6, False, False),
            (7, True, False), (8, True, True), (8, False, False),
        ]
    },
    "prune_then_quant4": (MagnitudePrune(sparsity=0.8), AffineQuantize(bits=4)),
    "prune_layer_then_quant8_sym": (
        MagnitudePrune(sparsity=0.5, scope="layer"),
        AffineQuantize(bits=8, symmetric=True),
    ),
    "structured_half": (StructuredPrune(ratio=0.5),),
    "structured_then_prune_then_quant4": (
        StructuredPrune(ratio=0.25),
        MagnitudePrune(sparsity=0.5),
        AffineQuantize(bits=4),
    ),
}
ALL_CONFIGS = sorted({c for cs in METHODS.values() for c in cs}, key=repr)


def make(model_key: str, seed: int = 0) -> tuple[dict, nn.Module, torch.Tensor]:
    recipe = MODELS[model_key]
    torch.manual_seed(seed)
    model = compress.build_model(recipe)
    x = torch.randn(6, *recipe["input_shape"], generator=torch.Generator().manual_seed(seed + 1))
    return recipe, model, x


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


# ------------------------------------------------------------- contract suite

contract = pytest.mark.parametrize("method", sorted(METHODS))
models = pytest.mark.parametrize("model_key", sorted(MODELS))


@contract
@models
def test_output_shape_kept_and_input_untouched(method: str, model_key: str) -> None:
    _, model, x = make(model_key)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = compress.compress(model, *METHODS[method])
    assert outputs(small, x).shape == outputs(model, x).shape
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"compress changed the input model's {k}"


@contract
@models
def test_artifact_not_larger_than_dense_and_reloads_same(
    method: str, model_key: str, tmp_path: Path
) -> None:
    recipe, model, x = make(model_key)
    small = compress.compress(model, *METHODS[method])
    path = tmp_path / "model.slim"
    n = compress.save(small, path, recipe=recipe, metrics={"accuracy": 0.5})
    assert n == path.stat().st_size
    assert n <= compress.dense_bytes(model, recipe)
    loaded = compress.load(path)
    diff = (outputs(loaded, x) - outputs(small, x)).abs().max().item()
    assert diff <= 1e-5, f"reloaded outputs differ by {diff}"
    man = compress.read_manifest(path)
    assert man["recipe"] == recipe
    assert [compress.config_from_json(c) for c in man["configs"]] == list(METHODS[method])
    assert man["metrics"] == {"accuracy": 0.5}
    assert set(man["versions"]) == {"torch", "numpy", "python"}


@contract
@models
def test_deterministic_under_seed(method: str, model_key: str, tmp_path: Path) -> None:
    blobs = []
    for i in range(2):
        _, model, _ = make(model_key, seed=3)
        compress.save(compress.compress(model, *METHODS[method]), tmp_path / f"{i}.slim")
        blobs.append((tmp_path / f"{i}.slim").read_bytes())
    assert blobs[0] == blobs[1]
    _, other, _ = make(model_key, seed=4)
    compress.save(compress.compress(other, *METHODS[method]), tmp_path / "other.slim")
    assert (tmp_path / "other.slim").read_bytes() != blobs[0]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=repr)
def test_config_json_round_trip(config: object) -> None:
    d = compress.config_to_json(config)
    assert d["_type"] == type(config).__name__ and d["_version"] == 1
    again = compress.config_from_json(json.loads(json.dumps(d)))
    assert type(again) is type(config) and again == config


# ------------------------------------------------------------------- artifact


@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_resave_of_loaded_model_is_byte_identical(model_key: str, tmp_path: Path) -> None:
    recipe, model, _ = make(model_key)
    small = compress.compress(model, *METHODS["prune_then_quant4"])
    compress.save(small, tmp_path / "a.slim", metrics={"loss": 0.25})
    loaded = compress.load(tmp_path / "a.slim")
    compress.save(loaded, tmp_path / "b.slim", metrics={"loss": 0.25})
    assert (tmp_path / "a.slim").read_bytes() == (tmp_path / "b.slim").read_bytes()
    assert compress.applied_configs(loaded) == METHODS["prune_then_quant4"]


def test_pruned_and_4bit_mlp_is_at_least_4x_smaller(tmp_path: Path) -> None:
    recipe = {"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 2, "width": 64}
    torch.manual_seed(0)
    model = compress.build_model(recipe)
    small = compress.compress(model, MagnitudePrune(sparsity=0.8), AffineQuantize(bits=4))
    n = compress.save(small, tmp_path / "m.slim")
    assert 4 * n <= compress.dense_bytes(model, recipe), (n, compress.dense_bytes(model, recipe))


def test_pruned_zeros_are_not_stored_as_dense_floats(tmp_path: Path) -> None:
    _, model, _ = make("mlp")
    compress.save(compress.compress(model, MagnitudePrune(sparsity=0.5)), tmp_path / "m.slim")
    weights = [t for t in compress.read_manifest(tmp_path / "m.slim")["tensors"]
               if t["name"].endswith("weight")]
    assert weights and all(t["layout"] in ("bitmask", "delta") for t in weights)


def test_sparse_layout_picks_smaller_index_encoding(tmp_path: Path) -> None:
    # Very sparse -> delta indices beat a bitmask; half sparse -> bitmask wins.
    _, model, _ = make("mlp")
    for sparsity, layout in [(0.99, "delta"), (0.5, "bitmask")]:
        small = compress.compress(model, MagnitudePrune(sparsity=sparsity, scope="layer"))
        compress.save(small, tmp_path / "m.slim")
        man = compress.read_manifest(tmp_path / "m.slim")
        first = next(t for t in man["tensors"] if t["name"] == "1.weight")
        assert first["layout"] == layout


def test_dense_bytes_is_plain_fp32_size() -> None:
    recipe, model, _ = make("mlp")
    params, _ = compress.count_params(model)
    n = compress.dense_bytes(model, recipe)
    assert 4 * params < n < 4 * params + 4096  # fp32 values plus a small manifest


def test_save_leaves_no_temp_files_and_load_rejects_other_files(tmp_path: Path) -> None:
    recipe, model, _ = make("mlp")
    compress.save(model, tmp_path / "sub" / "m.slim", recipe=recipe)
    assert os.listdir(tmp_path / "sub") == ["m.slim"]
    (tmp_path / "bad.bin").write_bytes(b"not an artifact at all")
    with pytest.raises(ValueError, match="not a slimtune artifact"):
        compress.load(tmp_path / "bad.bin")


def test_load_does_not_touch_global_rng(tmp_path: Path) -> None:
    recipe, model, _ = make("cnn1d")
    compress.save(model, tmp_path / "m.slim", recipe=recipe)
    torch.manual_seed(123)
    compress.load(tmp_path / "m.slim")
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


def test_save_refuses_weights_changed_after_quantization(tmp_path: Path) -> None:
    _, model, _ = make("mlp")
    small = compress.compress(model, AffineQuantize(bits=4))
    with torch.no_grad():
        small[1].weight.add_(1e-3)
    with pytest.raises(ValueError, match="off its quantization grid"):
        compress.save(small, tmp_path / "m.slim")


def test_save_needs_a_recipe_for_foreign_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recipe"):
        compress.save(nn.Linear(3, 2), tmp_path / "m.slim")


# ------------------------------------------------------------------- pruning


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("model_key", ["mlp", "cnn1d"])
def test_global_sparsity_reached(sparsity: float, model_key: str) -> None:
    _, model, _ = make(model_key)
    small = compress.compress(model, MagnitudePrune(sparsity=sparsity))
    masks = compress.sparsity_masks(small)
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert abs(zeros - sparsity * total) <= 1
    # Global: every kept weight is at least as large as every pruned one.
    kept = torch.cat([w.abs().flatten()[m.flatten()] for w, m in zip(
        (small.get_parameter(k) for k in masks), masks.values())])
    pruned = torch.cat([w.abs().flatten()[~m.flatten()] for w, m in zip(
        (model.get_parameter(k) for k in masks), masks.values())])
    if len(pruned) and len(kept):
        assert pruned.max() <= kept.min()


def test_layer_scope_prunes_each_tensor_to_the_fraction() -> None:
    _, model, _ = make("cnn2d")
    small = compress.compress(model, MagnitudePrune(sparsity=0.6, scope="layer"))
    for name, mask in compress.sparsity_masks(small).items():
        assert abs(int((~mask).sum()) - 0.6 * mask.numel()) <= 1, name


def test_threshold_zeros_exactly_the_small_weights() -> None:
    _, model, _ = make("mlp")
    small = compress.compress(model, MagnitudePrune(threshold=0.05))
    for name, mask in compress.sparsity_masks(small).items():
        assert torch.equal(mask, model.get_parameter(name).abs() >= 0.05), name


def test_biases_are_not_pruned_and_last_layer_is() -> None:
    _, model, _ = make("mlp")
    small = compress.compress(model, MagnitudePrune(sparsity=0.9))
    assert torch.equal(small[-1].bias, model[-1].bias)
    assert (small[-1].weight == 0).any()


def test_apply_masks_keeps_pruned_weights_zero_while_training() -> None:
    _, model, x = make("mlp")
    small = compress.compress(model, MagnitudePrune(sparsity=0.8))
    masks = compress.sparsity_masks(small)
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        small(x).square().mean().backward()
        opt.step()
        compress.apply_masks_(small, masks)
    assert compress.sparsity_masks(small).keys() == masks.keys()
    for name, mask in compress.sparsity_masks(small).items():
        assert not (mask & ~masks[name]).any(), name
    with pytest.raises(ValueError, match="shape"):
        compress.apply_masks_(small, {"1.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no parameter"):
        compress.apply_masks_(small, {"nope.weight": torch.ones(1, dtype=torch.bool)})


def test_count_params() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.zero_()
    assert compress.count_params(model) == (8, int((model[0].bias != 0).sum()))


# --------------------------------------------------------------- quantization


def test_quantized_weights_take_at_most_2_to_the_k_values() -> None:
    _, model, _ = make("mlp")
    for bits in range(2, 9):
        small = compress.compress(model, AffineQuantize(bits=bits, per_channel=False))
        for name in compress.sparsity_masks(small):
            assert small.get_parameter(name).unique().numel() <= 2**bits


def test_quantization_keeps_pruned_zeros_and_error_small() -> None:
    _, model, x = make("mlp")
    pruned = compress.compress(model, MagnitudePrune(sparsity=0.5))
    both = compress.compress(pruned, AffineQuantize(bits=8))
    for name, mask in compress.sparsity_masks(pruned).items():
        assert not both.get_parameter(name)[~mask].any(), name
    ref, out = outputs(pruned, x), outputs(both, x)
    sqnr = 20 * math.log10(ref.norm() / (ref - out).norm())
    assert sqnr >= 30, f"8-bit SQNR {sqnr:.1f} dB is too low"


float32s = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(float32s, min_size=1, max_size=40),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
)
def test_dequant_error_at_most_half_a_step_inside_the_range(
    values: list[float], bits: int, symmetric: bool
) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    qp = choose_qparams(x, bits, per_channel=False, symmetric=symmetric)
    codes = quantize(x, qp)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    scale, zp = qp.scale.item(), qp.zero_point.item()
    lo, hi = (0 - zp) * scale, (2**bits - 1 - zp) * scale
    inside = (x >= lo) & (x <= hi)
    err = (dequantize(codes, qp) - x).abs()[inside]
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-30).all()
    assert dequantize(quantize(torch.zeros(1), qp), qp).item() == 0.0  # zero is exact
    if not symmetric:  # asymmetric range covers the data (up to rounding the zero-point)
        assert ((dequantize(codes, qp) - x).abs() <= scale * (1 + 1e-5)).all()


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), data=st.data())
def test_bit_packing_round_trips(bits: int, data: st.DataObject) -> None:
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=50))
    arr = np.array(codes, dtype=np.uint8)
    buf = pack_bits(arr, bits)
    assert len(buf) == math.ceil(len(codes) * bits / 8)
    assert np.array_equal(unpack_bits(buf, bits, len(codes)), arr)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=30))
def test_varint_round_trips(values: list[int]) -> None:
    assert _varint_decode(_varint_encode(np.array(values, dtype=np.uint64))).tolist() == values


# -------------------------------------------------------------------- models


def test_cnn_shapes_follow_the_stride_rule() -> None:
    torch.manual_seed(0)
    m1 = compress.build_model(MODELS["cnn1d"])
    assert m1[-1].in_features == 8 * 5  # 40 -> 20 -> 10 -> 5
    m2 = compress.build_model(MODELS["cnn2d"])
    assert m2[-1].in_features == 8 * 4 * 4  # 8x8 -> 4x4 -> 4x4
    assert m2(torch.randn(2, 8, 8)).shape == (2, 10)
    assert m2(torch.randn(2, 64)).shape == (2, 10)  # flat input works too


def test_mlp_layout() -> None:
    torch.manual_seed(0)
    m = compress.build_model({"arch": "mlp", "input_shape": [8, 8], "output_dim": 1,
                              "depth": 3, "width": 5})
    linears = [mod for mod in m if isinstance(mod, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(64, 5), (5, 5), (5, 5), (5, 1)]


def test_build_model_is_reproducible_under_seed() -> None:
    a, b = make("hook_residual", seed=7)[1], make("hook_residual", seed=7)[1]
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize(
    "recipe, error, words",
    [
        ({"arch": "rnn"}, ValueError, ["arch", "'rnn'"]),
        ({**MODELS["mlp"], "widht": 3}, ValueError, ["'widht'", "Did you mean 'width'"]),
        ({**MODELS["mlp"], "depth": 0}, ValueError, ["depth", "depth=0"]),
        ({**MODELS["mlp"], "width": True}, ValueError, ["width"]),
        ({**MODELS["mlp"], "input_shape": []}, ValueError, ["input_shape"]),
        ({k: v for k, v in MODELS["mlp"].items() if k != "width"}, ValueError, ["'width'"]),
        ({**MODELS["cnn1d"], "input_shape": [2, 4, 4]}, ValueError, ["input_shape", "[2, 4, 4]"]),
        ({"arch": "hook", "hook": "tests.nope:f"}, ValueError, ["tests.nope:f"]),
        ({"arch": "hook", "hook": "tests.user_models:nope"}, ValueError, ["tests.user_models:nope"]),
        ({"arch": "hook", "hook": "no_colon"}, ValueError, ["no_colon"]),
        ({"arch": "hook", "hook": "tests.user_models:not_a_module"}, TypeError,
         ["tests.user_models:not_a_module", "dict"]),
        ("mlp", TypeError, ["recipe", "str"]),
    ],
)
def test_bad_recipes_raise_with_the_rule(recipe: object, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        compress.build_model(recipe)
    for w in words:
        assert w in str(info.value)


# --------------------------------------------------------- configs and errors


@pytest.mark.parametrize(
    "make_config, error, field",
    [
        (lambda: MagnitudePrune(), ValueError, "sparsity"),
        (lambda: MagnitudePrune(sparsity=0.5, threshold=0.1), ValueError, "threshold"),
        (lambda: MagnitudePrune(sparsity=1.2), ValueError, "sparsity=1.2"),
        (lambda: MagnitudePrune(sparsity=1.0), ValueError, "sparsity"),
        (lambda: MagnitudePrune(sparsity=-0.1), ValueError, "sparsity"),
        (lambda: MagnitudePrune(sparsity=float("nan")), ValueError, "sparsity"),
        (lambda: MagnitudePrune(sparsity="0.5"), TypeError, "sparsity"),
        (lambda: MagnitudePrune(threshold=-1.0), ValueError, "threshold=-1.0"),
        (lambda: MagnitudePrune(threshold=float("inf")), ValueError, "threshold"),
        (lambda: MagnitudePrune(sparsity=0.5, scope="row"), ValueError, "scope='row'"),
        (lambda: AffineQuantize(bits=1), ValueError, "bits=1"),
        (lambda: AffineQuantize(bits=32), ValueError, "bits=32"),
        (lambda: AffineQuantize(bits=4.0), TypeError, "bits"),
        (lambda: AffineQuantize(per_channel="yes"), TypeError, "per_channel"),
        (lambda: AffineQuantize(symmetric=1), TypeError, "symmetric"),
        (lambda: StructuredPrune(ratio=1.0), ValueError, "ratio=1.0"),
        (lambda: StructuredPrune(ratio=-0.5), ValueError, "ratio"),
        (lambda: StructuredPrune(ratio=None), TypeError, "ratio"),
    ],
)
def test_bad_configs_raise_naming_the_field(make_config, error: type, field: str) -> None:
    with pytest.raises(error, match=field.replace("(", r"\(").replace(".", r"\.")):
        make_config()


def test_configs_are_frozen_and_ints_normalised() -> None:
    cfg = MagnitudePrune(sparsity=0)
    assert cfg.sparsity == 0.0 and isinstance(cfg.sparsity, float)
    with pytest.raises(AttributeError):
        cfg.sparsity = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "d, words",
    [
        ({"_type": "os.system", "_version": 1, "_data": {}}, ["unknown config type"]),
        ({"_type": "MagnitudePrun", "_version": 1, "_data": {}}, ["Did you mean 'MagnitudePrune'"]),
        ({"_type": "AffineQuantize", "_version": 9, "_data": {}}, ["_version=9"]),
        ({"_type": "AffineQuantize", "_version": 1, "_data": {"bit": 4}},
         ["'bit'", "Did you mean 'bits'"]),
        ({"_type": "AffineQuantize", "_data": {}}, ["_version"]),
    ],
)
def test_config_from_json_rejects_unknown_input(d: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        compress.config_from_json(d)
    for w in words:
        assert w in str(info.value)


def test_register_dispatches_on_config_type() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class ZeroBiases:
        pass

    @compress.register(ZeroBiases)
    def _zero_biases(model: nn.Module, config: ZeroBiases) -> nn.Module:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        return model

    _, model, _ = make("mlp")
    out = compress.compress(model, ZeroBiases())
    assert not out[-1].bias.any() and model[-1].bias.any()
    with pytest.raises(TypeError, match="only slimtune config types"):
        compress.config_to_json(ZeroBiases())


def test_unregistered_config_and_non_module_raise() -> None:
    _, model, _ = make("mlp")
    with pytest.raises(TypeError, match="no compression function is registered for dict"):
        compress.compress(model, {"sparsity": 0.5})
    with pytest.raises(TypeError, match="nn.Module"):
        compress.compress("model", MagnitudePrune(sparsity=0.5))


def test_deepcopy_keeps_quantization_parameters() -> None:
    _, model, _ = make("mlp")
    q = compress.compress(model, AffineQuantize(bits=4))
    again = compress.compress(q)  # a plain deep copy
    assert again[1].weight_qparams.bits == 4
    assert torch.equal(again[1].weight_qparams.scale, q[1].weight_qparams.scale)


# ------------------------------------------------------- structured pruning


@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_structured_prune_shrinks_tensors_and_keeps_the_output_layer(
    model_key: str, tmp_path: Path
) -> None:
    recipe, model, x = make(model_key)
    small = compress.compress(model, StructuredPrune(ratio=0.5))
    layers = compress.prunable_modules(model)
    shrunk = dict(compress.prunable_modules(small))
    last_name, last = layers[-1]
    assert shrunk[last_name].weight.shape[0] == last.weight.shape[0]  # output kept
    for name, module in layers[:-1]:  # hidden widths are halved
        assert shrunk[name].weight.shape[0] == module.weight.shape[0] // 2, name
    params, _ = compress.count_params(small)
    assert params < 0.6 * compress.count_params(model)[0]
    compress.save(small, tmp_path / "m.slim")
    shapes = {t["name"]: t["shape"] for t in compress.read_manifest(tmp_path / "m.slim")["tensors"]}
    assert shapes == {k: list(v.shape) for k, v in small.state_dict().items()}
    loaded = compress.load(tmp_path / "m.slim")
    for name, module in compress.prunable_modules(loaded):
        if isinstance(module, nn.Linear):
            assert (module.out_features, module.in_features) == tuple(module.weight.shape)
        else:
            assert module.out_channels == module.weight.shape[0]
    assert torch.equal(outputs(loaded, x), outputs(small, x))


def test_structured_prune_with_batchnorm_reloads_same(tmp_path: Path) -> None:
    recipe = {"arch": "hook", "hook": "tests.user_models:conv_bn", "input_shape": [6, 6],
              "config": {"channels": 8, "height": 6, "width": 6, "classes": 3}}
    torch.manual_seed(0)
    model = compress.build_model(recipe)
    x = torch.randn(4, 6, 6)
    model(x)  # training-mode pass fills the BatchNorm running statistics
    small = compress.compress(model, StructuredPrune(ratio=0.5), AffineQuantize(bits=6))
    assert small[2].running_mean.shape == (4,) and small[2].num_features == 4
    assert compress.save(small, tmp_path / "m.slim") <= compress.dense_bytes(model) / 2
    loaded = compress.load(tmp_path / "m.slim")
    assert not loaded.training and loaded[2].num_features == 4
    assert torch.equal(outputs(loaded, x), outputs(small, x))


def test_structured_prune_then_masks_and_finetune() -> None:
    _, model, x = make("cnn1d")
    small = compress.compress(model, StructuredPrune(ratio=0.5), MagnitudePrune(sparsity=0.5))
    masks = compress.sparsity_masks(small)
    assert masks["2.weight"].shape == (4, 1, 3)
    compress.apply_masks_(small, masks)
    assert outputs(small, x).shape == (6, 10)


def test_structured_prune_needs_an_input_shape() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="input_shape"):
        compress.compress(model, StructuredPrune(ratio=0.5))


# -------------------------------------------------------------------- summary


def test_summary_reports_sizes_and_latency(tmp_path: Path) -> None:
    recipe, model, _ = make("mlp")
    small = compress.compress(model, StructuredPrune(ratio=0.5), AffineQuantize(bits=4))
    small.train()
    report = compress.summary(small, repeats=2)
    assert set(report) == {
        "dense_bytes", "artifact_bytes", "compression_ratio", "params", "nonzero_params",
        "bits_per_weight", "latency_ms_b1", "latency_ms_b256",
    }
    assert report["dense_bytes"] == compress.dense_bytes(model, recipe)
    assert report["artifact_bytes"] == compress.save(small, tmp_path / "m.slim")
    assert report["compression_ratio"] == report["dense_bytes"] / report["artifact_bytes"] > 4
    assert (report["params"], report["nonzero_params"]) == compress.count_params(small)
    dense_params = compress.count_params(model)[0]
    assert report["bits_per_weight"] == pytest.approx(8 * report["artifact_bytes"] / dense_params)
    assert 0 < report["latency_ms_b1"] and 0 < report["latency_ms_b256"]
    assert small.training  # summary restores the mode
    json.dumps(report)
    with pytest.raises(ValueError, match="repeats=0"):
        compress.summary(small, repeats=0)


# ----------------------------------------------------------- import hygiene


FORBIDDEN = {"ray", "optuna", "pandas", "search", "cluster", "spaces"}


def test_compress_imports_only_torch_numpy_and_stdlib() -> None:
    allowed = {"torch", "numpy", "torch_pruning"} | set(sys.stdlib_module_names)
    for path in (ROOT / "compress").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_same_artifact_in_a_fresh_process_and_lean_import(tmp_path: Path) -> None:
    script = f"""
import hashlib, sys, torch, compress
assert not {FORBIDDEN!r} & {{m.split('.')[0] for m in sys.modules}}, "heavy import"
torch.manual_seed(5)
m = compress.build_model({MODELS['cnn1d']!r})
m = compress.compress(m, compress.MagnitudePrune(sparsity=0.6), compress.AffineQuantize(bits=5))
compress.save(m, {str(tmp_path / 'child.slim')!r})
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env, timeout=120)
    torch.manual_seed(5)
    m = compress.build_model(MODELS["cnn1d"])
    m = compress.compress(m, MagnitudePrune(sparsity=0.6), AffineQuantize(bits=5))
    compress.save(m, tmp_path / "parent.slim")
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()
              for f in ("child.slim", "parent.slim")]
    assert digest[0] == digest[1]
