"""Mixed precision: each layer's bit width from its sensitivity, within an average-bits budget.

A layer's sensitivity at ``k`` bits is the mean squared error of the model's outputs on a
calibration batch when only that layer's weight is quantized to ``k`` bits (as
`AffineQuantize` with the config's other fields would), against the unquantized outputs.
`assign_bits` starts every layer at the smallest width and, greedily, raises the layer whose
raise buys the most error reduction per extra bit, while the average width (weighted by each
layer's non-zero weights, the codes the artifact stores) stays within the budget.  Forward
passes only, in eval mode, no random numbers: the same model and batch give the same widths.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Iterable, Mapping, TypeVar

import torch
import torch.nn as nn

from ._models import prunable_modules
from ._quantize import (
    AffineQuantize,
    FakeQuantize,
    choose_qparams,
    dequantize,
    is_fake_quantized,
    qparams_of,
    quantize,
)

__all__ = ["assign_bits", "average_bits", "layer_sensitivity", "stored_widths"]

Q = TypeVar("Q", AffineQuantize, FakeQuantize)
WIDTHS = tuple(range(2, 9))


def layer_sensitivity(model: nn.Module, config: AffineQuantize | FakeQuantize, x: torch.Tensor,
                      choices: Iterable[int] = WIDTHS) -> dict[str, dict[int, float]]:
    """``{layer: {width: output MSE}}``: the error on ``x`` when only that layer is quantized."""
    widths = _choices(choices)
    if is_fake_quantized(model):
        raise ValueError("the model has FakeQuantize (QAT) parametrizations; measure sensitivity before QAT")
    model = copy.deepcopy(model).eval()
    out: dict[str, dict[int, float]] = {}
    with torch.no_grad():
        ref = model(x).float()
        for name, module in prunable_modules(model):
            w = module.weight.detach().clone()
            out[name] = {}
            for k in widths:
                qp = choose_qparams(w, k, config.per_channel, config.symmetric, config.fp16)
                module.weight.copy_(dequantize(quantize(w, qp), qp))
                out[name][k] = float((model(x).float() - ref).pow(2).mean())
            module.weight.copy_(w)
    return out


def stored_widths(model: nn.Module) -> dict[str, int | None]:
    """Each Linear/Conv layer's quantized width (None where `AffineQuantize` did not quantize it),
    as `save` stores it and `load` gives it back."""
    return {n: None if qparams_of(m) is None else qparams_of(m).bits for n, m in prunable_modules(model)}


def average_bits(model: nn.Module, widths: Mapping[str, int]) -> float:
    """Mean of ``widths`` over the layers' non-zero weights (NaN for a model with none)."""
    counts = _counts(model)
    total = sum(counts.values())
    return sum(counts[n] * widths[n] for n in counts) / total if total else math.nan


def assign_bits(model: nn.Module, config: Q, x: torch.Tensor, *, budget: float | None = None,
                choices: Iterable[int] = WIDTHS) -> Q:
    """``config`` with ``layer_bits`` chosen for ``model`` from each layer's sensitivity on ``x``.

    budget:  the largest average width (weighted by non-zero weights); default: the average
             of the widths ``config`` itself gives (same bytes, placed by sensitivity).
    choices: the widths a layer may get (2..8).
    Every layer is assigned (``bits_first``/``bits_last`` are cleared); the result is a plain
    config, so it round-trips through JSON and `compress` applies it without ``x``.
    """
    if not isinstance(config, (AffineQuantize, FakeQuantize)):
        raise TypeError(f"`config` must be an AffineQuantize or FakeQuantize, but got {type(config).__name__}")
    widths = _choices(choices)
    counts = _counts(model)
    if budget is None:
        budget = average_bits(model, config.widths(model))
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not widths[0] <= budget or budget != budget:
        raise ValueError(f"`budget >= {widths[0]}` (the smallest of `choices`) must hold, but got budget={budget!r}")
    error = layer_sensitivity(model, config, x, widths)
    width = {n: widths[0] for n in counts}
    allowed = budget * sum(counts.values()) + 1e-6
    spent = sum(counts[n] * width[n] for n in counts)
    while True:
        best, best_ratio = None, 0.0
        for name in counts:  # module order; the first of equal ratios wins
            for k in widths:
                extra = counts[name] * (k - width[name])
                gain = error[name][width[name]] - error[name][k]
                if k <= width[name] or spent + extra > allowed or gain <= 0 or extra == 0:
                    continue
                if gain / extra > best_ratio:
                    best, best_ratio = (name, k, extra), gain / extra
        if best is None:
            break
        name, k, extra = best
        width[name], spent = k, spent + extra
    return dataclasses.replace(config, bits_first=None, bits_last=None, layer_bits=tuple(width.items()))


def _counts(model: nn.Module) -> dict[str, int]:
    return {n: int(torch.count_nonzero(m.weight.detach())) for n, m in prunable_modules(model)}


def _choices(choices: Iterable[int]) -> list[int]:
    widths = sorted(set(choices))
    if not widths or any(isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 8 for k in widths):
        raise ValueError(f"`choices` must be widths in 2..8, but got choices={list(choices)!r}")
    return widths
