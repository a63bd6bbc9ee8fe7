"""One-call size and speed report of a (compressed) model."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn as nn

from ._artifact import _encode, _recipe, dense_bytes
from ._int8 import to_int8
from ._models import build_model, prunable_modules
from ._prune import count_params

__all__ = ["summary", "macs"]


def summary(
    model: nn.Module, recipe: dict[str, Any] | None = None, *, repeats: int = 5
) -> dict[str, float | int]:
    """Sizes and CPU latency of ``model``; all values JSON-able.

    Keys:
      dense_bytes        the recipe's uncompressed model as plain fp32 (`dense_bytes`)
      artifact_bytes     what `save` would write for ``model``
      compression_ratio  dense_bytes / artifact_bytes
      params, nonzero_params   of ``model`` (`count_params`)
      bits_per_weight    8 * artifact_bytes / parameters of the uncompressed model
      macs               multiply-accumulates of Linear/Conv layers for one
                         input, as executed (dense kernels: masks do not cut
                         them, structured pruning does; see `macs`)
      latency_ms_b1, latency_ms_b256   median wall time of one forward pass on
                         CPU at batch 1 and 256 (``repeats`` timed runs after 2
                         warm-ups, torch.inference_mode, the current torch
                         thread count).  The model runs dense fp32 weights, so
                         pruning to masks and quantization do not change it;
                         structured pruning does.
      int8_latency_ms_b1, int8_latency_ms_b256   the same for `to_int8(model)`
                         (Linear layers on int8 kernels)
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats >= 1` (int) must hold, but got repeats={repeats!r}")
    recipe = _recipe(model, recipe)
    if "input_shape" not in recipe:
        raise ValueError(
            "summary times the model on random inputs, so the recipe needs `input_shape`, "
            f"but got keys {sorted(recipe)}"
        )
    with torch.random.fork_rng(devices=[]):
        reference = build_model(recipe)
    dense = dense_bytes(reference, recipe)
    artifact = len(_encode(model, recipe, dense=False))
    params, nonzero = count_params(model)
    dense_params, _ = count_params(reference)
    int8 = to_int8(model)
    shape = recipe["input_shape"]
    return {
        "dense_bytes": dense,
        "artifact_bytes": artifact,
        "compression_ratio": dense / artifact,
        "params": params,
        "nonzero_params": nonzero,
        "bits_per_weight": 8 * artifact / max(1, dense_params),
        "macs": macs(model, shape),
        "latency_ms_b1": latency_ms(model, shape, 1, repeats),
        "latency_ms_b256": latency_ms(model, shape, 256, repeats),
        "int8_latency_ms_b1": latency_ms(int8, shape, 1, repeats),
        "int8_latency_ms_b256": latency_ms(int8, shape, 256, repeats),
    }


def macs(model: nn.Module, input_shape: list[int]) -> int:
    """Multiply-accumulates of every Linear/Conv/ConvTranspose layer for one input of ``input_shape``.

    Counted from the shapes seen in one forward pass (forward hooks): a Linear
    does in_features per output element, a Conv in_channels/groups * kernel
    size per output element.  Zeros in the weights still count.
    """
    total = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        w = module.weight
        if isinstance(module, nn.Embedding):  # a lookup: no multiply-accumulates
            return
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            total += w[0].numel() * inputs[0].numel()  # each input element meets out/groups * kernel weights
            return
        per_output = w[0].numel()  # in_features, or in_channels/groups * kernel
        total += per_output * output.numel()

    handles = [m.register_forward_hook(hook) for _, m in prunable_modules(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def latency_ms(model: nn.Module, shape: list[int], batch: int = 1, repeats: int = 20,
               dtype: torch.dtype = torch.float32) -> float:
    """Median CPU wall time of one forward pass of a ``(batch, *shape)`` input, in ms (after
    two warm-up passes; the model's train/eval mode is restored). ``dtype`` torch.long: an
    input of token ids (zeros)."""
    if dtype.is_floating_point:
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    else:
        x = torch.zeros(batch, *shape, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000 * statistics.median(times)
