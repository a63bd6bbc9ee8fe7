"""Build a model from a JSON-able recipe.

The same recipe always builds the same architecture (``load`` relies on it);
the initial weights come from torch's global RNG, so the caller seeds.
"""

from __future__ import annotations

import importlib
import json
import math
from typing import Any, Callable

import torch.nn as nn

from ._config import closest

__all__ = ["build_model", "prunable_modules", "recipe_of", "register_builder", "unreached_layers"]

#: Builders registered for ``module:function`` names (models defined in a script or a notebook).
_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_builder(hook: str, builder: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Let ``build_model`` and ``load`` build recipes naming ``hook`` with ``builder`` instead of
    importing it (registering is this process's consent to run it, like ``builders=``)."""
    _BUILDERS[hook] = builder

_KEYS = {
    "mlp": {"arch", "input_shape", "output_dim", "depth", "width"},
    "cnn": {"arch", "input_shape", "output_dim", "depth", "width"},
    # For hooks, input_shape/output_dim/depth/width are optional and only checked;
    # the hook function receives `config`.
    "hook": {"arch", "hook", "config", "input_shape", "output_dim", "depth", "width"},
}
_REQUIRED = {
    "mlp": {"arch", "input_shape", "output_dim", "depth", "width"},
    "cnn": {"arch", "input_shape", "output_dim", "depth", "width"},
    "hook": {"arch", "hook"},
}
# Attribute on which `build_model` records the recipe it was given.
_RECIPE_ATTR = "slimtune_recipe"
#: The layers magnitude pruning and quantization reach (their ``weight``; per-channel scales are
#: per slice of its first axis: output channels, a transposed conv's input channels, an
#: embedding's rows). Structured pruning reaches Linear/Conv1d/Conv2d (:data:`CHANNEL_PRUNABLE`).
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
            nn.Embedding)
CHANNEL_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def build_model(recipe: dict[str, Any], *, builder: Callable[[dict[str, Any]], nn.Module] | None = None) -> nn.Module:
    """Build an ``nn.Module`` from ``recipe`` (see the package docstring).

    ``arch`` is ``"mlp"``, ``"cnn"`` or ``"hook"``.  Inputs are float32 tensors
    of shape ``(batch, *input_shape)``.  ``width`` is one int for every hidden
    layer or a list with one per layer (``{"depth": 2, "width": [300, 100]}``
    is LeNet-300-100's shape).  The recipe is recorded on the model
    (``recipe_of(model)``) so later steps need not be handed it again.
    ``builder``: for arch ``"hook"``, the function to call instead of importing
    ``recipe["hook"]`` (`load` uses it so that no code is imported unasked).
    """
    _check_recipe(recipe)
    arch = recipe["arch"]
    if arch == "mlp":
        model = _mlp(recipe)
    elif arch == "cnn":
        model = _cnn(recipe)
    else:
        model = _hook(recipe, builder)
    object.__setattr__(model, _RECIPE_ATTR, json.loads(json.dumps(recipe)))
    return model


def registered_builder(hook: str) -> Callable[[dict[str, Any]], nn.Module] | None:
    """The builder `register_builder` registered for ``hook``, or None."""
    return _BUILDERS.get(hook)


def recipe_of(model: nn.Module) -> dict[str, Any] | None:
    """The recipe `build_model` recorded on ``model`` (None if not built by it)."""
    return getattr(model, _RECIPE_ATTR, None)


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer in :data:`PRUNABLE`, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def unreached_layers(model: nn.Module) -> dict[str, int]:
    """Parameters in layers the compression methods do not reach, by layer type: every module
    with parameters of its own that is not in :data:`PRUNABLE` (e.g. ``{"LayerNorm": 64}``)."""
    out: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, PRUNABLE):
            continue
        n = sum(p.numel() for p in m.parameters(recurse=False))
        if n:
            out[type(m).__name__] = out.get(type(m).__name__, 0) + n
    return out


def _widths(recipe: dict[str, Any]) -> list[int]:
    """One width per hidden layer: ``width`` repeated ``depth`` times, or the list itself."""
    width = recipe["width"]
    return list(width) if isinstance(width, (list, tuple)) else [width] * recipe["depth"]


def builtin_size(recipe: dict[str, Any]) -> tuple[int, int, int]:
    """(parameters, activation values per input row, layers) of the mlp/cnn ``recipe``
    describes, computed from the numbers alone so `load` can bound a model before it
    builds one.  ``recipe`` has passed `_check_recipe`."""
    shape = list(recipe["input_shape"])
    features = math.prod(shape)
    params, acts, widths = 0, features, _widths(recipe)
    if recipe["arch"] == "mlp":
        for width in widths:
            params, acts, features = params + (features + 1) * width, acts + width, width
    else:
        channels = 1
        for width in widths:
            params += (channels * 3 ** len(shape) + 1) * width
            shape = [(s + 2 - 3) // (2 if s > 4 else 1) + 1 for s in shape]
            channels = width
            features = channels * math.prod(shape)
            acts += features
    params += (features + 1) * recipe["output_dim"]
    return params, acts + recipe["output_dim"], len(widths) + 1


def _mlp(recipe: dict[str, Any]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(recipe["input_shape"])
    for width in _widths(recipe):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, recipe["output_dim"]))
    return nn.Sequential(*layers)


def _cnn(recipe: dict[str, Any]) -> nn.Module:
    shape = list(recipe["input_shape"])
    if len(shape) not in (1, 2):
        raise ValueError(
            "arch 'cnn' needs `input_shape` with 1 (sequence) or 2 (image) dims, "
            f"but got input_shape={shape}; use arch 'mlp' for other shapes"
        )
    conv = nn.Conv1d if len(shape) == 1 else nn.Conv2d
    # Flatten first so (batch, *input_shape) and already-flat inputs both work.
    layers: list[nn.Module] = [nn.Flatten(), nn.Unflatten(1, (1, *shape))]
    channels = 1
    for width in _widths(recipe):
        stride = tuple(2 if s > 4 else 1 for s in shape)
        layers += [conv(channels, width, 3, stride=stride, padding=1), nn.ReLU()]
        shape = [(s + 2 - 3) // st + 1 for s, st in zip(shape, stride)]
        channels = width
    layers += [nn.Flatten(), nn.Linear(channels * math.prod(shape), recipe["output_dim"])]
    return nn.Sequential(*layers)


def _hook(recipe: dict[str, Any], builder: Callable[[dict[str, Any]], nn.Module] | None) -> nn.Module:
    hook = recipe["hook"]
    builder = builder if builder is not None else _BUILDERS.get(hook)
    if builder is not None:
        return _checked(hook, builder(dict(recipe.get("config", {}))))
    module_name, _, func_name = hook.partition(":")
    if not module_name or not func_name:
        raise ValueError(
            f"`hook` must look like 'package.module:function', but got hook={hook!r}"
        )
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"cannot import hook {hook!r} ({e}); make sure the module is importable "
            "(on PYTHONPATH) and defines that function"
        ) from e
    return _checked(hook, func(dict(recipe.get("config", {}))))


def _checked(hook: str, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"hook {hook!r} must return a torch.nn.Module, but returned {type(model).__name__}"
        )
    return model


def _check_recipe(recipe: Any) -> None:
    if not isinstance(recipe, dict):
        raise TypeError(f"`recipe` must be a dict, but got {type(recipe).__name__}")
    arch = recipe.get("arch")
    if arch not in _KEYS:
        raise ValueError(
            f"recipe `arch` must be one of {sorted(_KEYS)}, but got arch={arch!r}."
            f"{closest(arch, _KEYS)}"
        )
    for key in recipe:
        if key not in _KEYS[arch]:
            raise ValueError(
                f"unknown recipe key {key!r} for arch {arch!r}; known keys: "
                f"{sorted(_KEYS[arch])}.{closest(key, _KEYS[arch])}"
            )
    for key in sorted(_REQUIRED[arch] - set(recipe)):
        raise ValueError(f"recipe for arch {arch!r} needs key {key!r}; got keys {sorted(recipe)}")
    width = recipe.get("width")
    if isinstance(width, (list, tuple)):
        if not width or not all(_is_int(v) and v >= 1 for v in width) or (
            "depth" in recipe and len(width) != recipe["depth"]
        ):
            raise ValueError(
                "recipe `width` must be an int >= 1 or a list of `depth` ints >= 1 (one per "
                f"hidden layer), but got width={width!r}, depth={recipe.get('depth')!r}"
            )
    for key in ("output_dim", "depth", "width"):
        if key == "width" and isinstance(width, (list, tuple)):
            continue
        if key in recipe:
            v = recipe[key]
            if not _is_int(v) or v < 1:
                raise ValueError(f"recipe `{key}` must be an int >= 1, but got {key}={v!r}")
    if "input_shape" in recipe:
        s = recipe["input_shape"]
        if not isinstance(s, (list, tuple)) or not s or not all(_is_int(v) and v >= 1 for v in s):
            raise ValueError(
                "recipe `input_shape` must be a non-empty list of ints >= 1, e.g. [64] or "
                f"[8, 8], but got input_shape={s!r}"
            )
    if arch == "hook":
        if not isinstance(recipe["hook"], str):
            raise TypeError(f"recipe `hook` must be a str, but got hook={recipe['hook']!r}")
        if not isinstance(recipe.get("config", {}), dict):
            raise TypeError(
                f"recipe `config` must be a dict, but got config={recipe['config']!r}"
            )
    try:
        json.dumps(recipe, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`recipe` must be JSON-serialisable ({e}), but got {recipe!r}") from e


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
