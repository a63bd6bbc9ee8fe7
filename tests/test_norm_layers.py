"""Structured pruning plus save/load is exact for LayerNorm and GroupNorm models, and a hook model
whose artifact would not reload to the same outputs is refused when it is saved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtune import compress
from tests.user_hooks import norm_net

RECIPE = {"arch": "hook", "hook": "tests.user_hooks:norm_net", "input_shape": [64], "output_dim": 10,
          "config": {"width": 32, "input_shape": [64], "output_dim": 10}}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = compress.build_model(RECIPE, builder=norm_net)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("configs", [
    (compress.StructuredPrune(ratio=0.5),),
    (compress.StructuredPrune(ratio=0.25), compress.AffineQuantize(bits=4)),
])
def test_structured_pruning_of_layernorm_and_groupnorm_models_reloads_exactly(configs, tmp_path):
    small = compress.compress(_model(), *configs)
    shapes = {type(m).__name__: tuple(m.weight.shape) for m in small.modules() if isinstance(m, (nn.LayerNorm,
                                                                                                  nn.GroupNorm))}
    assert all(s[0] < 32 for s in shapes.values()), shapes  # the pruner shrank both norms
    compress.save(small, tmp_path / "m.slim")
    back = compress.load(tmp_path / "m.slim", builders={RECIPE["hook"]: norm_net})
    x = torch.randn(8, 64)
    with torch.no_grad():
        assert torch.equal(small.eval()(x), back(x))
    assert {type(m).__name__: tuple(m.weight.shape) for m in back.modules()
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm))} == shapes


def test_a_hook_model_its_artifact_cannot_rebuild_is_refused_when_a_trial_saves_it(tmp_path):
    from slimtune.search.trial import _saved

    model = _model()
    model.gain = 3.0  # state outside the tensors: the artifact rebuilds the model with gain 1.0
    with pytest.raises(ValueError, match="does not reload to the same model"):
        _saved(model, compress.recipe_of(model))
    compress.save(model, tmp_path / "m.slim")  # save itself imports and runs nothing
    with pytest.raises(ValueError, match="does not reload to the same model"):
        compress.check_reloads(model, (tmp_path / "m.slim").read_bytes(), norm_net)
    model.gain = 1.0
    assert len(_saved(model, compress.recipe_of(model))) > 0


def test_layers_no_method_reaches_are_counted_and_builtin_models_have_none():
    model = _model()
    unreached = compress.unreached_layers(model)
    assert unreached == {"LayerNorm": 64, "GroupNorm": 64}
    for arch, shape in (("mlp", [64]), ("cnn", [40]), ("cnn", [8, 8])):
        recipe = {"arch": arch, "input_shape": shape, "output_dim": 10, "depth": 2, "width": 8}
        assert compress.unreached_layers(compress.build_model(recipe)) == {}


def test_a_sweep_says_once_which_layers_stay_uncompressed_and_counts_them_per_row(ray_session, tmp_path, capsys):
    from slimtune.search import load_results, run_sweep
    from slimtune.spaces import parse_spec
    from tests.test_sweep import digits_spec

    spec = digits_spec(name="t-norms", task={"dataset": "digits", "model": "tests.user_hooks:norm_net", "epochs": 1},
                       space={"lr": 0.01, "batch_size": 64, "width": 16})
    spec["search"] = {**spec["search"], "trials": 2}
    run_sweep(parse_spec(spec), tmp_path / "run", quiet=True)
    err = capsys.readouterr().err
    assert err.count("stay float32") == 1 and "LayerNorm (32 parameters), GroupNorm (32 parameters)" in err
    ok = load_results(tmp_path / "run").query("status == 'ok'")
    compressed = ok[(ok["prune_method"] != "none") | (ok["bits"] < 32)]
    plain = ok[(ok["prune_method"] == "none") & (ok["bits"] == 32)]
    assert len(ok) and (compressed["uncompressed_params"] == 64).all() and (plain["uncompressed_params"] == 0).all()


class Mixed(nn.Module):
    """Token ids -> Embedding -> ConvTranspose1d -> Conv3d (as 1x1x1 over a reshaped view) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.up = nn.ConvTranspose1d(8, 8, 3, stride=2)
        self.mix = nn.Conv3d(8, 4, 1)
        self.head = nn.Linear(4 * 13, 10)

    def forward(self, x):
        h = self.embed(x.long().clamp(0, 49)).transpose(1, 2)        # (N, 8, 6)
        h = torch.relu(self.up(h))                                   # (N, 8, 13)
        h = torch.relu(self.mix(h[:, :, :, None, None]))[:, :, :, 0, 0]
        return self.head(h.flatten(1))


def _mixed(config):
    return Mixed()


@pytest.mark.parametrize("configs", [
    (compress.MagnitudePrune(sparsity=0.5), compress.AffineQuantize(bits=4)),
    (compress.FakeQuantize(bits=3),),
])
def test_embedding_convtranspose_and_conv3d_are_pruned_and_quantized_and_reload_exactly(configs, tmp_path):
    recipe = {"arch": "hook", "hook": "mixed", "input_shape": [6], "output_dim": 10}
    torch.manual_seed(0)
    model = compress.build_model(recipe, builder=_mixed)
    assert compress.unreached_layers(model) == {}
    if isinstance(configs[0], compress.FakeQuantize):
        configs = (*configs, compress.AffineQuantize(bits=3))
    small = compress.compress(model, *configs)
    widths = compress.stored_widths(small)
    assert set(widths) == {"embed", "up", "mix", "head"} and set(widths.values()) == {configs[-1].bits}
    compress.save(small, tmp_path / "m.slim")
    assert compress.dense_bytes(model) > 3 * (tmp_path / "m.slim").stat().st_size
    back = compress.load(tmp_path / "m.slim", builders={"mixed": _mixed})
    x = torch.randint(0, 50, (4, 6)).float()
    with torch.no_grad():
        assert torch.equal(small.eval()(x), back(x))
