"""slimtune.compress: compression methods for small PyTorch models.

A method is a frozen config dataclass plus a function ``(model, config) ->
model`` registered for its type; `compress(model, *configs)` returns a
compressed copy.  `save` writes one artifact file whose length is the size we
report; `load` rebuilds a working model from it.

    model = build_model({"arch": "mlp", "input_shape": [64], "output_dim": 10,
                         "depth": 2, "width": 64})
    small = compress(model, MagnitudePrune(sparsity=0.8), AffineQuantize(bits=4))
    nbytes = save(small, "model.slim")   # the file's length
    again = load("model.slim")        # same outputs; also bytes or a binary file object

`load` treats the file as untrusted: malformed bytes raise `ArtifactError`, the
model it describes is bounded (`max_params`), and a ``module:function`` model
is imported only with ``trust_code=True`` or ``builders={"mod:fn": fn}``.

Methods: `MagnitudePrune`, `StructuredPrune`, `AffineQuantize` (PTQ) and
`FakeQuantize` (QAT, finished by `AffineQuantize`); per-layer widths through their
``bits_first``/``bits_last``/``layer_bits``, or chosen by `assign_bits` from each layer's
sensitivity within an average-bits budget.  Fine-tuning helpers:
`sparsity_masks`/`apply_masks_`, `gradual_pruning` (cubic schedule).  `summary`
reports sizes, MACs and latency; `to_int8` runs Linear layers on int8 kernels.

This package imports torch, numpy and the standard library only
(`StructuredPrune` imports torch_pruning when it runs).
"""

from ._artifact import check_reloads, dense_bytes, save
from ._codes import pack_bits
from ._config import applied_configs, compress, config_from_json, config_to_json, register
from ._int8 import Int8Linear, to_int8
from ._load import MAX_PARAMS, ArtifactError, UntrustedCodeError, load, read_manifest
from ._mixed import assign_bits, average_bits, layer_sensitivity, output_kl, output_mse, stored_widths
from ._models import build_model, prunable_modules, recipe_of, register_builder, unreached_layers
from ._prune import (
    MagnitudePrune,
    apply_masks_,
    count_params,
    cubic_sparsity,
    gradual_pruning,
    sparsity_masks,
)
from ._quantize import AffineQuantize, FakeQuantize, QParams, weight_codes
from ._structured import StructuredPrune
from ._summary import latency_ms, summary

__all__ = [
    "AffineQuantize",
    "ArtifactError",
    "MagnitudePrune",
    "MAX_PARAMS",
    "pack_bits",
    "QParams",
    "applied_configs",
    "apply_masks_",
    "check_reloads",
    "assign_bits",
    "average_bits",
    "build_model",
    "compress",
    "config_from_json",
    "config_to_json",
    "count_params",
    "cubic_sparsity",
    "dense_bytes",
    "FakeQuantize",
    "gradual_pruning",
    "Int8Linear",
    "latency_ms",
    "layer_sensitivity",
    "load",
    "output_kl",
    "output_mse",
    "prunable_modules",
    "read_manifest",
    "recipe_of",
    "register",
    "register_builder",
    "save",
    "sparsity_masks",
    "StructuredPrune",
    "stored_widths",
    "summary",
    "to_int8",
    "UntrustedCodeError",
    "unreached_layers",
    "weight_codes",
]
