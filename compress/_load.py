"""Reading artifacts: `load` and `read_manifest`, trusting nothing in the bytes.

An artifact may come from a shared bucket, so reading one must neither run code
nor allocate what its numbers claim before they are checked (`_parse`):

* A recipe that names a ``module:function`` model is imported only when the
  caller passes that builder (``builders={"mod:fn": fn}``) or ``trust_code=True``;
  the built-in architectures need no import.
* The model a built-in recipe describes (parameters, activations per row, layers)
  is bounded by ``max_params`` and the stored tensors before it is built, and the
  stored tensors must fit it (a forward pass gives the recipe's outputs).
* Anything malformed raises `ArtifactError` (a ``ValueError``) with one line.

So memory and time are O(file length + max_params) whatever the bytes say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ._config import config_from_json
from ._format3 import resolve
from ._models import _check_recipe, build_model, builtin_size, prunable_modules, registered_builder
from ._parse import (
    MAX_PARAMS,
    ArtifactError,
    Source,
    _bad,
    _check_manifest,
    _data_length,
    _decode,
    _guard,
    _parse,
    _read,
)
from ._quantize import QPARAMS_ATTR

__all__ = ["ArtifactError", "UntrustedCodeError", "load", "read_manifest", "resize_", "MAX_PARAMS"]

Builder = Callable[[dict[str, Any]], nn.Module]


class UntrustedCodeError(ArtifactError):
    """The artifact's model is a ``module:function`` hook and the caller did not opt in."""

    def __init__(self, message: str, hook: str) -> None:
        super().__init__(message)
        self.hook = hook


def load(
    src: Source,
    *,
    builders: Mapping[str, Builder] | None = None,
    trust_code: bool = False,
    max_params: int = MAX_PARAMS,
) -> nn.Module:
    """Rebuild the model saved in ``src`` (a path, ``bytes`` or a binary file object).

    The architecture is rebuilt from the stored recipe without touching torch's
    global RNG, resized to the stored tensor shapes (structured pruning), and
    the decoded tensors are loaded.  Quantized weights get their QParams back.
    The model is returned in eval mode (call ``.train()`` to fine-tune it).
    `applied_configs` of the result are the configs a format-1/2 file recorded;
    format 3 keeps them out of the file (they are in the results row), so ``()``.

    builders:   for a recipe whose model is a ``"module:function"`` hook, the
                function to call for it, keyed by that string (nothing is imported).
    trust_code: import and run the hook the recipe names (only for artifacts
                from a source you trust, like ``torch.load(weights_only=False)``).
    max_params: bound on the model the artifact may describe (see `MAX_PARAMS`).
    Raises `ArtifactError` for malformed input, and its subclass
    `UntrustedCodeError` for a hook model without ``builders``/``trust_code``.
    """
    blob, label = _read(src, max_params)
    version, manifest, take = _guard(label, _parse, blob, label, max_params)
    configs = () if version == 3 else _guard(label, lambda: tuple(config_from_json(c) for c in manifest["configs"]))
    recipe = manifest["recipe"]
    model = _build(recipe, label, manifest["tensors"], _Consent(builders, trust_code), max_params)
    table = manifest["tensors"]
    if version == 3:  # names and shapes from the model the recipe built
        table = _guard(label, resolve, table, model.state_dict())
        _guard(label, _check_manifest, {"recipe": recipe, "configs": [], "tensors": table}, label, max_params)
    data = _guard(label, take, _data_length(table))
    _guard(label, _fill, model, recipe, table, data, label)
    object.__setattr__(model, "slimtune_configs", configs)
    return model.eval()


def read_manifest(src: Source, *, max_params: int = MAX_PARAMS) -> dict[str, Any]:
    """What the artifact in ``src`` says about itself (decodes no tensor data; imports nothing).

    Format 3: ``{"format": 3, "recipe": ..., "tensors": [...]}``, one encoding per tensor of
    the recipe's model in state-dict order (``layout``, ``values``, ``dtype``; ``stored``/``scales``
    ``"float16"``; codes: ``bits``, ``per_channel``, ``packing``; sparse: ``nnz``, ``index``
    length; ``shape`` where it is stored).  Formats 1 and 2: their JSON manifest, which also
    names each tensor with its shape and holds configs, metrics and library versions.
    """
    blob, label = _read(src, max_params)
    _, manifest, _ = _guard(label, _parse, blob, label, max_params)
    return manifest


# --------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Consent:
    """What the caller of :func:`load` allows a hook recipe: these ``builders``, or with
    ``trust_code`` importing the hook it names."""

    builders: Mapping[str, Builder] | None
    trust_code: bool


def _build(recipe: dict[str, Any], label: str, tensors: list[dict[str, Any]], consent: _Consent,
           max_params: int) -> nn.Module:
    """The recipe's model, bounded (built-ins) or built only with the caller's consent (hooks)."""
    builders, trust_code = consent.builders, consent.trust_code
    try:
        _check_recipe(recipe)
    except (TypeError, ValueError, RecursionError) as e:
        raise _bad(label, f"bad recipe ({' '.join(str(e).split())[:300]})") from None
    builder = None
    if recipe["arch"] == "hook":
        hook = recipe["hook"]
        builder = (builders or {}).get(hook) or registered_builder(hook)
        if builder is None and not trust_code:
            raise UntrustedCodeError(
                f"{label!r} builds its model by importing and running {hook!r}; load it only if you trust "
                f"its source, with trust_code=True or builders={{{hook!r}: fn}}", hook)
    else:
        width = recipe["width"]
        layers = (len(width) if isinstance(width, list) else recipe["depth"]) + 1
        if 2 * layers != len(tensors):  # weight and bias per layer; bounds depth before anything is built
            raise _bad(label, f"its recipe describes {layers} layers, but {len(tensors)} tensors are stored")
        params, acts, _ = builtin_size(recipe)
        if max(params, acts) > max_params:
            raise _bad(label, f"its recipe describes {params} parameters and {acts} activations per row, over "
                              f"max_params={max_params} (pass a larger max_params if you trust it)")
    try:
        with torch.random.fork_rng(devices=[]):
            return build_model(recipe, builder=builder)
    except Exception as e:  # the builder is trusted, but the config it gets comes from the file
        raise _bad(label, f"its recipe does not build ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e


def _fill(model: nn.Module, recipe: dict[str, Any], tensors: list[dict[str, Any]], data: bytes, label: str) -> None:
    """Check the stored tensors against the model, decode them into it, restore QParams."""
    own = model.state_dict()
    stored = {e["name"]: e for e in tensors}
    if set(own) != set(stored):
        odd = sorted(set(own) ^ set(stored))[:3]
        raise _bad(label, f"its tensors do not match the recipe's model (e.g. {odd})")
    for name, e in stored.items():
        have = tuple(own[name].shape)
        if len(e["shape"]) != len(have) or any(s > h for s, h in zip(e["shape"], have)):
            raise _bad(label, f"tensor {name!r} has shape {e['shape']}, larger than the model's {list(have)}")
    state, qparams = {}, {}
    for name, e in stored.items():
        state[name], qp = _decode(e, data, label)
        if qp is not None:
            qparams[name] = qp
    resize_(model, {k: tuple(v.shape) for k, v in state.items()})
    model.load_state_dict(state, strict=True)
    for name, module in prunable_modules(model):
        qp = qparams.get(f"{name}.weight")
        if qp is not None:
            object.__setattr__(module, QPARAMS_ATTR, qp)
    if recipe["arch"] != "hook":  # cost bounded by builtin_size: the stored parts must fit together
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *recipe["input_shape"]))
        if tuple(out.shape) != (1, recipe["output_dim"]):
            raise _bad(label, f"its tensors give {tuple(out.shape)[1:]} outputs, "
                              f"the recipe says {recipe['output_dim']}")


def resize_(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """In place: give named parameters/buffers new shapes (values uninitialised).

    Used by `load` after structured pruning; keeps Linear/Conv/BatchNorm/LayerNorm/GroupNorm
    size attributes in step with their tensors.
    """
    modules = dict(model.named_modules())
    touched = set()
    for name, shape in shapes.items():
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        if module is None:
            continue
        params = dict(module.named_parameters(recurse=False))
        old = params.get(attr, dict(module.named_buffers(recurse=False)).get(attr))
        if old is None or tuple(old.shape) == tuple(shape):
            continue
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        # Module.__setattr__ replaces a registered parameter or buffer in place (a buffer keeps
        # its persistence)
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad) if attr in params else new)
        touched.add(module)
    for module in touched:
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, CONVS):
            if module.groups > 1 and module.groups == module.in_channels:  # depthwise: the groups follow the channels
                module.groups = module.weight.shape[0] // (module.out_channels // module.groups)
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, NORMS):
            stats = getattr(module, "running_mean", None)
            module.num_features = (stats if stats is not None else module.weight).shape[0]
        elif isinstance(module, nn.LayerNorm):
            module.normalized_shape = tuple((module.weight if module.weight is not None else module.bias).shape)
        elif isinstance(module, nn.GroupNorm):
            module.num_channels = int(module.weight.shape[0])


#: Layers whose size attributes follow their weight's shape (torch's public classes; their
#: private bases _ConvNd and _NormBase are not used).
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
         nn.InstanceNorm3d)
