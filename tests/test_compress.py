"""Tests for `compress`: one contract suite over every method and model, then
numerics, properties (hypothesis), sizes, errors and import hygiene."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtune import compress
from slimtune.compress import AffineQuantize, FakeQuantize, MagnitudePrune, StructuredPrune
from slimtune.compress._codes import (
    _rice_encode,
    _varint_decode,
    _varint_encode,
    pack_bits,
    unpack_bits,
)
from slimtune.compress._parse import _mask, _rice_gaps
from slimtune.compress._quantize import choose_qparams, dequantize, quantize
from tests import user_hooks, user_models

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "fixtures" / "artifacts_old"  # formats 1 and 2, written by the format-2 writer

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
    # Two real model shapes: MLPerf Tiny's ResNet-8 (residual stages, BatchNorm) and a DS-CNN
    # (depthwise-separable convolutions), as tests/user_models.py builds them.
    "hook_resnet8": {"arch": "hook", "hook": "tests.user_models:resnet8", "input_shape": [8, 8], "output_dim": 10,
                     "config": {"input_shape": [8, 8], "output_dim": 10, "width": 8}},
    "hook_dscnn": {"arch": "hook", "hook": "tests.user_models:ds_cnn", "input_shape": [40], "output_dim": 10,
                   "config": {"input_shape": [40], "output_dim": 10, "width": 12, "depth": 2}},
    # LayerNorm and GroupNorm between Linear layers (the loader resizes both after structured pruning)
    "hook_norms": {"arch": "hook", "hook": "tests.user_hooks:norm_net", "input_shape": [64], "output_dim": 10,
                   "config": {"input_shape": [64], "output_dim": 10, "width": 32}},
    # token ids (long) into an Embedding
    "hook_tokens": {"arch": "hook", "hook": "tests.user_hooks:token_net", "input_shape": [12], "output_dim": 4,
                    "config": {"input_shape": [12], "output_dim": 4, "width": 16}},
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
    # QAT = FakeQuantize (fine-tuning would happen here) then AffineQuantize.
    "qat4": (FakeQuantize(bits=4), AffineQuantize(bits=4)),
    "prune_then_qat3_tensor_sym": (
        MagnitudePrune(threshold=0.05),
        FakeQuantize(bits=3, per_channel=False, symmetric=True),
        AffineQuantize(bits=3, per_channel=False, symmetric=True),
    ),
    "structured_then_qat8": (StructuredPrune(ratio=0.5), FakeQuantize(bits=8), AffineQuantize(bits=8)),
    # fp32 scales and biases (fp16=False), as before artifact format 3.
    "quant4_fp32": (AffineQuantize(bits=4, fp16=False),),
    "qat4_fp32": (FakeQuantize(bits=4, fp16=False), AffineQuantize(bits=4, fp16=False)),
    # Mixed precision: first and last layer apart from the rest.
    "quant4_first8_last3": (AffineQuantize(bits=4, bits_first=8, bits_last=3),),
    "prune_then_quant2_first6_last8_tensor": (
        MagnitudePrune(sparsity=0.7),
        AffineQuantize(bits=2, bits_first=6, bits_last=8, per_channel=False),
    ),
    "qat3_first8_last6": (FakeQuantize(bits=3, bits_first=8, bits_last=6),
                          AffineQuantize(bits=3, bits_first=8, bits_last=6)),
}
# What `compress.load` may call for the hook recipes above (it imports nothing itself).
BUILDERS = {"tests.user_models:residual_mlp": user_models.residual_mlp,
            "tests.user_models:resnet8": user_models.resnet8, "tests.user_models:ds_cnn": user_models.ds_cnn,
            "tests.user_hooks:norm_net": user_hooks.norm_net, "tests.user_hooks:token_net": user_hooks.token_net}
ALL_CONFIGS = sorted({c for cs in METHODS.values() for c in cs}, key=repr)


def make(model_key: str, seed: int = 0) -> tuple[dict, nn.Module, torch.Tensor]:
    recipe = MODELS[model_key]
    torch.manual_seed(seed)
    model = compress.build_model(recipe)
    x = torch.randn(6, *recipe["input_shape"], generator=torch.Generator().manual_seed(seed + 1))
    if recipe.get("hook") == "tests.user_hooks:token_net":  # token ids
        x = torch.randint(0, 30, (6, *recipe["input_shape"]), generator=torch.Generator().manual_seed(seed + 1))
    return recipe, model, x


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def stored(path: Path, model: nn.Module) -> dict[str, dict]:
    """The format-3 header's encoding of each tensor, by the name ``model``'s state dict gives it."""
    man = compress.read_manifest(path)
    assert man["format"] == 3 and len(man["tensors"]) == len(model.state_dict())
    return dict(zip(model.state_dict(), man["tensors"], strict=True))


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
    n = compress.save(small, path, recipe=recipe)
    assert n == path.stat().st_size
    assert n <= compress.dense_bytes(model, recipe)
    loaded = compress.load(path, builders=BUILDERS)
    assert torch.equal(outputs(loaded, x), outputs(small, x))  # exact: the saved model is the evaluated one
    man = compress.read_manifest(path)
    assert set(man) == {"format", "recipe", "tensors"} and man["recipe"] == recipe  # no metrics, configs, versions


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
    assert d["_type"] == type(config).__name__ and d["_version"] == type(config).VERSION
    again = compress.config_from_json(json.loads(json.dumps(d)))
    assert type(again) is type(config) and again == config


@pytest.mark.parametrize("cls", [AffineQuantize, FakeQuantize])
def test_version_1_quantize_json_means_fp32_scales(cls: type) -> None:
    # Written before `fp16` existed (scales and biases were fp32): read back as fp16=False.
    old = {"_type": cls.__name__, "_version": 1, "_data": {"bits": 4, "per_channel": True, "symmetric": False}}
    assert compress.config_from_json(old) == cls(bits=4, fp16=False)
    assert cls(bits=4).fp16 and compress.config_to_json(cls(bits=4))["_version"] == 3
    with pytest.raises(ValueError, match="reads version 3 or 1 or 2"):
        compress.config_from_json({**old, "_version": 4})


# ------------------------------------------------------------------- artifact


@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_resave_of_loaded_model_is_byte_identical(model_key: str, tmp_path: Path) -> None:
    recipe, model, _ = make(model_key)
    small = compress.compress(model, *METHODS["prune_then_quant4"])
    compress.save(small, tmp_path / "a.slim")
    loaded = compress.load(tmp_path / "a.slim", trust_code=True)
    compress.save(loaded, tmp_path / "b.slim")
    assert (tmp_path / "a.slim").read_bytes() == (tmp_path / "b.slim").read_bytes()
    assert compress.applied_configs(loaded) == ()  # configs are the row's, not the artifact's


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
    weights = [t for name, t in stored(tmp_path / "m.slim", model).items() if name.endswith("weight")]
    assert weights and all(t["layout"] in ("bitmask", "delta") for t in weights)


def test_sparse_layout_picks_smaller_index_encoding(tmp_path: Path) -> None:
    # Very sparse -> run-length (Rice-coded gaps) beats a bitmask; half sparse -> bitmask wins.
    _, model, x = make("mlp")
    for sparsity, layout in [(0.99, "rice"), (0.9, "rice"), (0.5, "bitmask")]:
        small = compress.compress(model, MagnitudePrune(sparsity=sparsity, scope="layer"))
        compress.save(small, tmp_path / "m.slim")
        assert stored(tmp_path / "m.slim", model)["1.weight"]["layout"] == layout
        assert torch.equal(outputs(compress.load(tmp_path / "m.slim"), x), outputs(small, x))


def test_rice_index_is_near_the_entropy_of_random_gaps() -> None:
    # Non-zeros at density p: gaps are geometric; Golomb-Rice gets within ~3% of their
    # entropy H(p)/p bits per non-zero, where LEB128 varints spend >= 8 bits.
    rng = np.random.default_rng(0)
    p, n = 0.05, 200_000
    mask = rng.random(n) < p
    gaps = np.diff(np.flatnonzero(mask), prepend=-1) - 1
    entropy_bits = n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    rice = _rice_encode(gaps)
    assert 8 * len(rice) <= 1.03 * entropy_bits
    assert len(rice) < 0.8 * len(_varint_encode(gaps))
    assert torch.equal(_mask("rice", rice, n, "t", "w"), torch.from_numpy(mask))  # as loading reads it


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=40), st.integers(0, 64))
def test_rice_round_trips_through_the_loaders_decoder(values: list[int], slack: int) -> None:
    # Gaps between the non-zeros of a tensor of `numel` elements (any tensor that holds them).
    numel = sum(v + 1 for v in values) + slack
    arr = np.array(values, dtype=np.uint64)
    assert _rice_gaps(_rice_encode(arr), numel, "t", "w").tolist() == values


def test_artifact_is_lzma_coded_when_shorter_and_dense_reference_is_not(tmp_path: Path) -> None:
    recipe, model, _ = make("mlp")
    small = compress.compress(model, MagnitudePrune(sparsity=0.9), AffineQuantize(bits=4))
    compress.save(small, tmp_path / "m.slim")
    blob = (tmp_path / "m.slim").read_bytes()
    assert blob[:8] == b"SLIMTUN\x03" and blob[8] == 1  # format 3, codec 1 = LZMA2
    dense_blob = compress._artifact._encode(model, recipe, dense=True)
    assert dense_blob[8] == 0 and len(dense_blob) == compress.dense_bytes(model, recipe)


def test_peaked_codes_are_stored_one_per_byte_for_lzma(tmp_path: Path) -> None:
    # Laplace-distributed weights give peaked 6-bit codes, which LZMA codes better byte-aligned.
    recipe, model, x = make("mlp")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in compress.prunable_modules(model):
            u = torch.rand(m.weight.shape, generator=gen) - 0.5
            m.weight.copy_(-0.05 * u.sign() * torch.log1p(-2 * u.abs()))
    small = compress.compress(model, AffineQuantize(bits=6, per_channel=False))
    compress.save(small, tmp_path / "m.slim")
    packings = {t.get("packing") for t in compress.read_manifest(tmp_path / "m.slim")["tensors"]
                if t["values"] == "codes"}
    assert packings == {"bytes"}
    assert torch.equal(outputs(compress.load(tmp_path / "m.slim"), x), outputs(small, x))


def test_format_1_and_2_artifacts_still_load() -> None:
    # Written by the format-2 writer: the same pruned 4-bit CNN as a fresh one with fp32 scales
    # (its configs come back as fp16=False), and the fuzz test's models in formats 1 and 2.
    recipe, model, x = make("cnn1d")
    configs = (MagnitudePrune(sparsity=0.7), AffineQuantize(bits=4, fp16=False))
    old = compress.load(OLD / "v2-cnn1d-metrics.slim")
    assert torch.equal(outputs(old, x), outputs(compress.compress(model, *configs), x))
    assert compress.applied_configs(old) == configs
    man = compress.read_manifest(OLD / "v2-cnn1d-metrics.slim")
    assert man["format"] == 2 and man["metrics"] == {"accuracy": 0.5} and man["recipe"] == recipe
    for path in sorted(OLD.glob("v[12]-*.slim")):
        head = path.read_bytes()[:8]
        assert head in (b"SLIMTUNE", b"SLIMTUN\x02"), path
        loaded = compress.load(path, builders=BUILDERS)
        recipe = compress.recipe_of(loaded)
        assert outputs(loaded, torch.zeros(1, *recipe["input_shape"])).shape == (1, recipe["output_dim"])


def test_format_3_is_lean_and_fp16_only_where_exact(tmp_path: Path) -> None:
    # The header: a few bytes per tensor, no names, no metrics; biases and scales fp16 only
    # after AffineQuantize rounded them (fp16=True), fp32 otherwise, and load is exact either way.
    recipe, model, x = make("mlp")
    for fp16 in (True, False):
        small = compress.compress(model, AffineQuantize(bits=4, fp16=fp16))
        compress.save(small, tmp_path / "m.slim")
        table = stored(tmp_path / "m.slim", small)
        assert all(("scales" in t) == fp16 for n, t in table.items() if n.endswith("weight"))
        assert all(("stored" in t) == fp16 for n, t in table.items() if n.endswith("bias"))
        assert torch.equal(outputs(compress.load(tmp_path / "m.slim"), x), outputs(small, x))
        for _, m in compress.prunable_modules(small):
            exact = torch.equal(m.bias.half().float(), m.bias)
            assert exact == fp16 and torch.equal(m.weight_qparams.scale.half().float(), m.weight_qparams.scale) == fp16
    body = compress._artifact._body(recipe, [], byte_codes=False)
    assert len(body) < 16  # varint length | recipe as numbers | tensor count 0
    # fp16 scales are rounded up, so the range still covers every weight: no code is clipped
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8):
        qp = choose_qparams(w, bits, True, False, fp16=True)
        codes = torch.round(w / qp.scale + qp.zero_point)
        assert codes.min() >= 0 and codes.max() <= 2**bits - 1
        assert ((dequantize(quantize(w, qp), qp) - w).abs() <= qp.scale / 2 * (1 + 1e-5)).all()


_ENTRY = st.fixed_dictionaries(
    {"layout": st.sampled_from(["dense", "bitmask", "delta", "rice"]), "values": st.sampled_from(["raw", "codes"]),
     "dtype": st.sampled_from(["float32", "float16", "int64", "bool"])},
    optional={"shape": st.lists(st.integers(0, 2**40), max_size=8)},
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_ENTRY, st.integers(2, 8), st.booleans(), st.booleans(), st.integers(0, 2**50))),
       st.sampled_from([MODELS["cnn1d"], {**MODELS["mlp"], "width": [32, 16]}, MODELS["hook_residual"]]))
def test_format_3_header_round_trips(raw: list, recipe: dict) -> None:
    from slimtune.compress._format3 import pack_header, read_header

    entries = []
    for e, bits, flag_a, flag_b, n in raw:
        e = dict(e)
        if e["values"] == "codes":
            e.update(bits=bits, per_channel=flag_a, **({"packing": "bytes"} if flag_b else {}),
                     **({"scales": "float16"} if flag_a != flag_b else {}))
        elif e["dtype"] == "float32" and flag_a:
            e["stored"] = "float16"
        if e["layout"] != "dense":
            e["nnz"] = n
        if e["layout"] in ("delta", "rice"):
            e["index"] = n // 3
        entries.append(e)
    assert read_header(pack_header(recipe, entries)) == {"format": 3, "recipe": recipe, "tensors": entries}


def test_save_refuses_a_model_that_does_not_match_its_builtin_recipe(tmp_path: Path) -> None:
    recipe, model, _ = make("mlp")
    with pytest.raises(ValueError, match="do not match its recipe"):
        compress.save(model, tmp_path / "m.slim", recipe={**recipe, "depth": 1})


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
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64, 5), (5, 5), (5, 5), (5, 1)]


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


# hook_tokens has no hidden channel to cut (an Embedding, then the output layer): nothing shrinks there.
@pytest.mark.parametrize("model_key", sorted(set(MODELS) - {"hook_tokens"}))
def test_structured_prune_shrinks_tensors_and_keeps_the_output_layer(
    model_key: str, tmp_path: Path
) -> None:
    recipe, model, x = make(model_key)
    small = compress.compress(model, StructuredPrune(ratio=0.5))
    # the layers structured pruning cuts along their output channels (an Embedding's rows are its vocabulary)
    layers = [(n, m) for n, m in compress.prunable_modules(model) if not isinstance(m, nn.Embedding)]
    shrunk = dict(compress.prunable_modules(small))
    last_name, last = layers[-1]
    assert shrunk[last_name].weight.shape[0] == last.weight.shape[0]  # output kept
    for name, module in layers[:-1]:  # hidden widths are halved
        assert shrunk[name].weight.shape[0] == module.weight.shape[0] // 2, name
    params, _ = compress.count_params(small)
    assert params < 0.6 * compress.count_params(model)[0]
    compress.save(small, tmp_path / "m.slim")
    table = stored(tmp_path / "m.slim", small)
    if recipe["arch"] != "hook":  # built-in models store only the shapes pruning changed
        unpruned = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert {k: t["shape"] for k, t in table.items() if "shape" in t} == {
            k: list(v.shape) for k, v in small.state_dict().items() if list(v.shape) != unpruned[k]}
    else:  # a hook's model is not built to save it, so every shape is stored
        assert {k: t["shape"] for k, t in table.items()} == {k: list(v.shape) for k, v in small.state_dict().items()}
    loaded = compress.load(tmp_path / "m.slim", builders=BUILDERS)
    for _name, module in compress.prunable_modules(loaded):
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
    loaded = compress.load(tmp_path / "m.slim", trust_code=True)
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
        "bits_per_weight", "macs", "latency_ms_b1", "latency_ms_b256", "int8_latency_ms_b1",
        "int8_latency_ms_b256",
    }
    assert report["macs"] == 64 * 16 + 16 * 16 + 16 * 10  # hidden widths 32 -> 16
    assert compress.summary(model, repeats=1)["macs"] == 64 * 32 + 32 * 32 + 32 * 10
    assert report["dense_bytes"] == compress.dense_bytes(model, recipe)
    assert report["artifact_bytes"] == compress.save(small, tmp_path / "m.slim")
    assert report["compression_ratio"] == report["dense_bytes"] / report["artifact_bytes"] > 4
    assert (report["params"], report["nonzero_params"]) == compress.count_params(small)
    dense_params = compress.count_params(model)[0]
    assert report["bits_per_weight"] == pytest.approx(8 * report["artifact_bytes"] / dense_params)
    assert all(report[k] > 0 for k in report if "latency" in k)
    assert small.training  # summary restores the mode
    json.dumps(report)
    with pytest.raises(ValueError, match="repeats=0"):
        compress.summary(small, repeats=0)


# ------------------------------------------------------------ gradual pruning


def test_cubic_sparsity_follows_zhu_and_gupta() -> None:
    assert compress.cubic_sparsity(0, 100, 0.9) == 0.0
    assert compress.cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert compress.cubic_sparsity(250, 100, 0.9) == pytest.approx(0.9)  # stays after n steps
    assert compress.cubic_sparsity(-5, 100, 0.9, initial=0.2) == pytest.approx(0.2)
    # s_t = s_f + (s_i - s_f)(1 - t/n)^3
    assert compress.cubic_sparsity(50, 100, 0.8, 0.2) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    values = [compress.cubic_sparsity(t, 40, 0.95) for t in range(41)]
    assert values == sorted(values)
    steps = np.diff(values)
    assert steps[0] > steps[-1]  # fast early, slow late
    assert compress.cubic_sparsity(3, 0, 0.7) == 0.7


def _sgd_steps(model: nn.Module, x: torch.Tensor, n: int, after_step) -> list[float]:
    """``n`` SGD steps on a fixed batch; sparsity of the prunable weights after each."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen = []
    for _ in range(n):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        after_step(model)
        masks = compress.sparsity_masks(model)
        seen.append(sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()))
    return seen


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_gradual_pruning_reaches_the_sparsity_along_the_schedule(scope: str) -> None:
    _, model, x = make("mlp")
    config = MagnitudePrune(sparsity=0.8, scope=scope)
    callback = compress.gradual_pruning(model, config, steps=20, ramp=0.5)
    seen = _sgd_steps(model, x, 20, callback)
    ramp = [compress.cubic_sparsity(t, 10, 0.8) for t in range(1, 11)]
    assert seen[:10] == pytest.approx(ramp, abs=0.01)
    assert seen[10:] == pytest.approx([0.8] * 10, abs=0.01)  # mask held while it fine-tunes
    assert all(a <= b + 1e-9 for a, b in zip(seen, seen[1:]))
    one_shot = compress.compress(make("mlp")[1], config)
    assert compress.sparsity_masks(model).keys() == compress.sparsity_masks(one_shot).keys()
    if scope == "layer":
        for name, mask in compress.sparsity_masks(model).items():
            assert abs(int((~mask).sum()) - 0.8 * mask.numel()) <= 1, name


def test_gradual_pruning_with_a_threshold_and_every() -> None:
    _, model, x = make("cnn1d")
    below = sum(int((m.weight.abs() < 0.1).sum()) for _, m in compress.prunable_modules(model))
    total = sum(m.weight.numel() for _, m in compress.prunable_modules(model))
    callback = compress.gradual_pruning(model, MagnitudePrune(threshold=0.1), steps=12, every=4)
    seen = _sgd_steps(model, x, 12, callback)
    assert seen[0] == seen[1] == seen[2] == 0.0  # first pruning at step 4
    assert seen[-1] == pytest.approx(below / total, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs, words",
    [({"steps": 0}, "steps=0"), ({"steps": 5, "ramp": 0.0}, "ramp=0.0"),
     ({"steps": 5, "every": 0}, "every=0"), ({"steps": 2.5}, "steps=2.5")],
)
def test_gradual_pruning_rejects_bad_arguments(kwargs: dict, words: str) -> None:
    _, model, _ = make("mlp")
    with pytest.raises(ValueError, match=words):
        compress.gradual_pruning(model, MagnitudePrune(sparsity=0.5), **kwargs)


# ------------------------------------------------------------------------ QAT


def test_fake_quantize_forward_is_the_final_quantized_model_and_gradient_is_straight_through() -> None:
    _, model, x = make("cnn2d")
    qat = compress.compress(model, FakeQuantize(bits=3))
    final = compress.compress(qat, AffineQuantize(bits=3))
    assert torch.equal(outputs(qat, x), outputs(final, x))
    assert compress.applied_configs(final) == (FakeQuantize(bits=3), AffineQuantize(bits=3))
    # STE: the latent weight gets exactly the gradient of the quantized weight it stands for.
    layer = compress.compress(nn.Linear(5, 3), FakeQuantize(bits=2))
    inp = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    layer(inp).sum().backward()
    latent = layer.parametrizations.weight.original
    assert torch.equal(latent.grad, torch.ones(4, 3).t() @ inp)
    assert all(row.unique().numel() <= 4 for row in layer.weight)  # 2 bits per channel


QAT4 = {"bits": 4}  # per channel, asymmetric


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((outputs(model, x) - y).square().mean())


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
         cosine: bool = False) -> list[float]:
    """Full-batch Adam on the MSE (lr decayed to 0 along a cosine if asked); each step's loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


def _trained_regression_net(seed: int) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """A small regression net trained to a low loss; 4-bit PTQ multiplies that loss."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 8, generator=gen)
    y = torch.sin(x @ torch.randn(8, 1, generator=gen)) + 0.5 * x[:, :1] * x[:, 1:2]
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    _fit(net, x, y, 0.01, 500)
    return x, y, net


def test_qat_starts_at_the_ptq_model_follows_its_gradient_and_ends_at_the_final_model() -> None:
    # The mechanism, exactly (no threshold on a trained metric): the QAT forward pass is the
    # PTQ model, the latent weights get the PTQ model's own gradients, and after fine-tuning
    # the QAT forward pass is exactly the model AffineQuantize saves.
    x, y, net = _trained_regression_net(0)
    ptq = compress.compress(net, AffineQuantize(**QAT4))
    qat = compress.compress(net, FakeQuantize(**QAT4))
    assert torch.equal(outputs(qat, x), outputs(ptq, x))
    for model in (ptq.train(), qat.train()):
        model.zero_grad()
        (model(x) - y).square().mean().backward()
    latent = {re.sub(r"\.parametrizations\.(weight|bias)\.original$", r".\1", n): p
              for n, p in qat.named_parameters()}
    assert latent.keys() == dict(ptq.named_parameters()).keys()
    for name, p in ptq.named_parameters():
        assert torch.equal(p.grad, latent[name].grad), name
    losses = _fit(qat, x, y, 3e-4, 20, cosine=True)
    assert losses[0] == _mse(ptq, x, y)
    final = compress.compress(qat, AffineQuantize(**QAT4))
    assert torch.equal(outputs(final, x), outputs(qat, x))
    assert _mse(final, x, y) == _fit(compress.compress(qat), x, y, 0.0, 1)[0]  # the next step's loss


@pytest.mark.ml
@pytest.mark.slow
def test_qat_recovers_accuracy_that_ptq_loses(seed_offset: int) -> None:
    # 4-bit PTQ of a trained net multiplies its training loss (3.1x to 77x over seeds 0..29);
    # QAT fine-tuning from that point (Adam, STE, cosine decay) takes back much of it. Per seed
    # qat/ptq ranged 0.07..0.80 over seeds 0..29, so one seed proves little; the median of 5
    # seeds stayed <= 0.66 for every 5 consecutive seeds, at 1 and 2 torch threads alike.
    errs = []
    for seed in range(seed_offset, seed_offset + 5):
        x, y, net = _trained_regression_net(seed)
        ptq = compress.compress(net, AffineQuantize(**QAT4))
        qat = compress.compress(net, FakeQuantize(**QAT4))
        _fit(qat, x, y, 3e-4, 200, cosine=True)
        final = compress.compress(qat, AffineQuantize(**QAT4))
        errs.append({"seed": seed, "fp": _mse(net, x, y), "ptq": _mse(ptq, x, y), "qat": _mse(final, x, y)})
    assert float(np.median([e["ptq"] / e["fp"] for e in errs])) > 2, errs  # PTQ does lose accuracy
    assert float(np.median([e["qat"] / e["ptq"] for e in errs])) < 0.8, errs


def test_qat_with_masks_keeps_pruned_zeros_and_save_needs_the_final_quantize(tmp_path: Path) -> None:
    _, model, x = make("mlp")
    pruned = compress.compress(model, MagnitudePrune(sparsity=0.7))
    masks = compress.sparsity_masks(pruned)
    qat = compress.compress(pruned, FakeQuantize(bits=4))
    _sgd_steps(qat, x, 3, lambda m: compress.apply_masks_(m, masks))
    assert compress.sparsity_masks(qat).keys() == masks.keys()
    for name, mask in compress.sparsity_masks(qat).items():
        assert not (mask & ~masks[name]).any(), name
    with pytest.raises(ValueError, match="FakeQuantize"):
        compress.save(qat, tmp_path / "m.slim")
    final = compress.compress(qat, AffineQuantize(bits=4))
    compress.save(final, tmp_path / "m.slim")
    assert torch.equal(outputs(compress.load(tmp_path / "m.slim"), x), outputs(qat, x))
    assert qat[1].parametrizations.weight.original is not None  # the QAT model is left as it was


# ---------------------------------------------------------------------- int8


@pytest.mark.parametrize(
    "configs",
    [(), (AffineQuantize(bits=8),), (AffineQuantize(bits=8, symmetric=True),),
     (AffineQuantize(bits=4, per_channel=False),), (MagnitudePrune(sparsity=0.8), AffineQuantize(bits=3))],
    ids=["fp32", "q8", "q8sym", "q4tensor", "prune_q3"],
)
def test_int8_linear_is_exact_for_int8_inputs(configs: tuple) -> None:
    # Rows of integers with max |x| = 127 quantize exactly, so only the weight handling shows.
    layer = nn.Linear(20, 7)
    torch.manual_seed(0)
    nn.init.normal_(layer.weight, std=0.3)
    model = compress.compress(nn.Sequential(layer), *configs)
    x = torch.randint(-127, 128, (5, 20), generator=torch.Generator().manual_seed(1)).float()
    x[:, 0] = 127.0
    int8 = compress.to_int8(model)
    assert isinstance(int8[0], compress.Int8Linear) and int8[0].weight_t.dtype == torch.int8
    if configs:  # quantized weights are used exactly: only float rounding differs
        assert torch.allclose(int8(x), model(x), rtol=1e-5, atol=1e-3)
    else:  # fp32 weights are rounded to int8 per channel: <= half a step per weight
        bound = (x.abs() @ (layer.weight.abs().amax(1) / 254).expand(20, 7)).max()
        assert (int8(x) - model(x)).abs().max() <= bound


@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_to_int8_runs_int8_linears_close_to_fp32(model_key: str) -> None:
    _, model, x = make(model_key)
    small = compress.compress(model, MagnitudePrune(sparsity=0.5), AffineQuantize(bits=8))
    int8 = compress.to_int8(small.train())
    assert not int8.training and small.training  # an eval copy; the input is untouched
    n_linear = sum(type(m) is nn.Linear for m in small.modules())
    assert sum(isinstance(m, compress.Int8Linear) for m in int8.modules()) == n_linear > 0
    ref, out = outputs(small, x), outputs(int8, x)
    assert out.shape == ref.shape
    assert (out - ref).norm() <= 0.05 * ref.norm()
    with pytest.raises(TypeError, match="nn.Module"):
        compress.to_int8("model")


def test_to_int8_refuses_weights_off_their_grid() -> None:
    _, model, _ = make("mlp")
    small = compress.compress(model, AffineQuantize(bits=4))
    with torch.no_grad():
        small[1].weight.add_(1e-3)
    with pytest.raises(ValueError, match="off its quantization grid"):
        compress.to_int8(small)


# -------------------------------------------------------- per-layer widths


def test_mlp_and_cnn_take_one_width_per_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lenet = compress.build_model({"arch": "mlp", "input_shape": [40], "output_dim": 10, "depth": 2,
                                  "width": [300, 100]})
    assert [m.weight.shape for _, m in compress.prunable_modules(lenet)] == [(300, 40), (100, 300), (10, 100)]
    compress.save(lenet, tmp_path / "m.slim")
    assert compress.load(tmp_path / "m.slim")[3].weight.shape == (100, 300)
    cnn = compress.build_model({"arch": "cnn", "input_shape": [8, 8], "output_dim": 3, "depth": 2, "width": [4, 6]})
    assert cnn(torch.zeros(2, 8, 8)).shape == (2, 3)
    for bad in ([300], [300, 0], [], [300, 1.5]):
        with pytest.raises(ValueError, match="width"):
            compress.build_model({"arch": "mlp", "input_shape": [40], "output_dim": 10, "depth": 2, "width": bad})


# ----------------------------------------------------------- import hygiene


FORBIDDEN = {"ray", "optuna", "pandas", "slimtune.search", "slimtune.cluster", "slimtune.spaces"}


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
                assert name.split(".")[0] in allowed or name.startswith("slimtune.compress"), \
                    f"{path.name} imports {name}"


def test_same_artifact_in_a_fresh_process_and_lean_import(tmp_path: Path) -> None:
    script = f"""
import hashlib, sys, torch
from slimtune import compress
loaded = {{m.split('.')[0] for m in sys.modules}} | {{'.'.join(m.split('.')[:2]) for m in sys.modules}}
assert not {FORBIDDEN!r} & loaded, "heavy import"
torch.manual_seed(5)
m = compress.build_model({MODELS['cnn1d']!r})
m = compress.compress(m, compress.MagnitudePrune(sparsity=0.6), compress.AffineQuantize(bits=5))
compress.save(m, {str(tmp_path / 'child.slim')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    torch.manual_seed(5)
    m = compress.build_model(MODELS["cnn1d"])
    m = compress.compress(m, MagnitudePrune(sparsity=0.6), AffineQuantize(bits=5))
    compress.save(m, tmp_path / "parent.slim")
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()
              for f in ("child.slim", "parent.slim")]
    assert digest[0] == digest[1]


# ------------------------------------------------------------ mixed precision


def _layers(model: nn.Module) -> list[str]:
    return [n for n, _ in compress.prunable_modules(model)]


@pytest.mark.parametrize("qat", [False, True], ids=["ptq", "qat"])
@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_per_layer_widths_round_trip_exactly(model_key: str, qat: bool, tmp_path: Path) -> None:
    recipe, model, x = make(model_key)
    names = _layers(model)
    layer_bits = {names[1]: 5} if len(names) > 2 else {}
    fields = dict(bits=3, bits_first=8, bits_last=6, layer_bits=layer_bits)
    configs = (FakeQuantize(**fields), AffineQuantize(**fields)) if qat else (AffineQuantize(**fields),)
    small = compress.compress(model, *configs)
    want = {n: 8 if i == 0 else 6 if i == len(names) - 1 else 3 for i, n in enumerate(names)} | layer_bits
    assert configs[-1].widths(model) == want
    assert {n: m.weight_qparams.bits for n, m in compress.prunable_modules(small)} == want
    compress.save(small, tmp_path / "m.slim", recipe=recipe)
    loaded = compress.load(tmp_path / "m.slim", builders=BUILDERS)
    assert {n: m.weight_qparams.bits for n, m in compress.prunable_modules(loaded)} == want
    entries = stored(tmp_path / "m.slim", loaded)
    assert {n: entries[f"{n}.weight"]["bits"] for n in names} == want  # the file holds each width
    assert torch.equal(outputs(loaded, x), outputs(small, x))
    for m in compress.prunable_modules(loaded):
        assert len(torch.unique(m[1].weight[0])) <= 2 ** m[1].weight_qparams.bits


def test_width_precedence_and_config_json() -> None:
    _, model, _ = make("cnn1d")
    names = _layers(model)
    assert AffineQuantize(bits=4).widths(model) == dict.fromkeys(names, 4)
    cfg = AffineQuantize(bits=4, bits_first=8, bits_last=2, layer_bits={names[-1]: 7})
    assert cfg.widths(model) == {names[0]: 8, **dict.fromkeys(names[1:-1], 4), names[-1]: 7}
    assert cfg.layer_bits == ((names[-1], 7),) and isinstance(hash(cfg), int)  # a frozen, hashable value
    again = compress.config_from_json(json.loads(json.dumps(compress.config_to_json(cfg))))
    assert again == cfg and again.widths(model) == cfg.widths(model)
    one = nn.Sequential(nn.Linear(4, 2))
    assert AffineQuantize(bits=4, bits_first=8, bits_last=3).widths(one) == {"0": 3}  # last wins
    # Version 2 (before per-layer widths) reads as one width for all layers.
    v2 = {"_type": "AffineQuantize", "_version": 2, "_data": {"bits": 4, "per_channel": True,
                                                              "symmetric": False, "fp16": True}}
    assert compress.config_from_json(v2) == AffineQuantize(bits=4)


@pytest.mark.parametrize(
    "make_config, error, words",
    [
        (lambda: AffineQuantize(bits=4, bits_first=9), ValueError, "bits_first=9"),
        (lambda: AffineQuantize(bits=4, bits_last=1), ValueError, "bits_last=1"),
        (lambda: FakeQuantize(bits=4, bits_last=4.0), TypeError, "bits_last=4.0"),
        (lambda: AffineQuantize(bits=4, bits_first=True), TypeError, "bits_first=True"),
        (lambda: AffineQuantize(layer_bits={"0": 16}), ValueError, "layer_bits['0']=16"),
        (lambda: AffineQuantize(layer_bits={"0": "8"}), TypeError, "layer_bits['0']='8'"),
        (lambda: AffineQuantize(layer_bits={0: 8}), TypeError, "module names"),
        (lambda: AffineQuantize(layer_bits=[("0", 8), ("0", 4)]), ValueError, "appears 2 times"),
        (lambda: AffineQuantize(layer_bits=8), TypeError, "layer_bits=8"),
    ],
)
def test_bad_widths_raise_naming_the_field(make_config, error: type, words: str) -> None:
    with pytest.raises(error, match=re.escape(words)):
        make_config()


def test_layer_bits_of_an_unknown_layer_is_refused_naming_the_layers() -> None:
    _, model, x = make("mlp")
    with pytest.raises(ValueError, match=r"'1\.weight', which is not a Linear/Conv layer.*'1'"):
        compress.compress(model, AffineQuantize(layer_bits={"1.weight": 8}))
    with pytest.raises(ValueError, match="budget >= 3"):
        compress.assign_bits(model, AffineQuantize(bits=4), x, budget=2.5, choices=[3, 4])
    with pytest.raises(ValueError, match="choices"):
        compress.assign_bits(model, AffineQuantize(bits=4), x, choices=[1, 4])


def _trained_mlp(seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = compress.build_model({"arch": "mlp", "input_shape": [16], "output_dim": 3, "depth": 2, "width": 24})
    x = torch.randn(128, 16)
    y = (x[:, :3] * torch.tensor([3.0, -2.0, 1.0])).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x


@pytest.mark.parametrize("budget", [2.0, 3.0, 4.0, 4.5, 6.25, 8.0])
def test_sensitivity_assignment_respects_the_budget_and_is_deterministic(budget: float) -> None:
    model, x = _trained_mlp(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compress.assign_bits(model, AffineQuantize(bits=4), x[:32], budget=budget)
    widths = dict(cfg.layer_bits)
    assert list(widths) == _layers(model) and cfg.bits_first is None and cfg.bits_last is None
    assert compress.average_bits(model, widths) <= budget + 1e-9
    assert all(2 <= w <= 8 for w in widths.values())
    assert compress.assign_bits(model, AffineQuantize(bits=4), x[:32], budget=budget) == cfg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # model untouched
    if budget in (2.0, 8.0):  # nothing to choose
        assert set(widths.values()) == {int(budget)}
    small = compress.compress(model, cfg)
    assert {n: m.weight_qparams.bits for n, m in compress.prunable_modules(small)} == widths


def test_default_budget_is_the_configs_own_average_and_choices_are_kept() -> None:
    model, x = _trained_mlp(1)
    manual = AffineQuantize(bits=3, bits_first=8, bits_last=8)
    auto = compress.assign_bits(model, manual, x[:32])
    assert compress.average_bits(model, dict(auto.layer_bits)) <= compress.average_bits(model, manual.widths(model))
    only = compress.assign_bits(model, manual, x[:32], budget=5.0, choices=(3, 6))
    assert set(dict(only.layer_bits).values()) <= {3, 6}


def test_sensitivity_is_the_output_error_of_quantizing_that_layer_alone() -> None:
    model, x = _trained_mlp(2)
    sens = compress.layer_sensitivity(model, AffineQuantize(bits=4), x[:32])
    name = _layers(model)[1]
    alone = compress.compress(model, AffineQuantize(bits=8, layer_bits={name: 3}))
    # Every other layer at 8 bits changes the outputs a little: the oracle allows for it.
    expected = float((outputs(alone, x[:32]) - outputs(model, x[:32])).pow(2).mean())
    assert sens[name][3] == pytest.approx(expected, rel=0.2)
    for errors in sens.values():
        assert errors[8] < errors[2]


def test_assignment_is_the_least_summed_sensitivity_within_the_budget() -> None:
    # Oracle: every combination of widths (4 layers, 4 choices) against the knapsack's answer.
    import itertools

    model, x = _trained_mlp(3)
    model = nn.Sequential(*model, nn.ReLU(), nn.Linear(3, 3))
    names = _layers(model)
    choices = (2, 3, 5, 8)
    sens = compress.layer_sensitivity(model, AffineQuantize(bits=4), x[:32], choices)
    for budget in (2.5, 3.4, 4.0, 6.0):
        got = dict(compress.assign_bits(model, AffineQuantize(bits=4), x[:32], budget=budget,
                                        choices=choices).layer_bits)
        fits = [dict(zip(names, ws)) for ws in itertools.product(choices, repeat=len(names))
                if compress.average_bits(model, dict(zip(names, ws))) <= budget + 1e-9]
        best = min(sum(sens[n][w[n]] for n in names) for w in fits)
        assert sum(sens[n][got[n]] for n in names) == pytest.approx(best, rel=1e-9)
        assert compress.average_bits(model, got) <= budget + 1e-9


def test_output_kl_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    ref = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    assert compress.output_kl(ref, ref) == pytest.approx(0.0, abs=1e-7)
    assert compress.output_kl(ref + 3.0, ref) == pytest.approx(0.0, abs=1e-6)  # same probabilities
    assert compress.output_kl(ref.flip(1), ref) > 0.01
    model, x = _trained_mlp(4)
    cfg = compress.assign_bits(model, AffineQuantize(bits=3), x[:32], error=compress.output_kl)
    assert compress.average_bits(model, dict(cfg.layer_bits)) <= 3.0 + 1e-9
