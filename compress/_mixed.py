"""Mixed precision: each layer's bit width from its sensitivity, within an average-bits budget.

A layer's sensitivity at ``k`` bits is the mean squared error of the model's outputs on a
calibration batch when only that layer's weight is quantized to ``k`` bits (as
`AffineQuantize` with the config's other fields would), against the unquantized outputs.
`assign_bits` then picks the widths with the least summed error whose average (weighted by each
layer's number of weights, i.e. bits per weight) stays within the budget: an exact
multiple-choice knapsack (dynamic programming over the bits spent).  Forward
passes only, in eval mode, no random numbers: the same model and batch give the same widths.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable, Iterable, Mapping, TypeVar

import numpy as np
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

__all__ = ["assign_bits", "average_bits", "layer_sensitivity", "output_kl", "output_mse", "stored_widths"]

Q = TypeVar("Q", AffineQuantize, FakeQuantize)
WIDTHS = tuple(range(2, 9))


def output_mse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean squared difference of the outputs (the default error)."""
    return float((out.float() - ref.float()).pow(2).mean())


def output_kl(out: torch.Tensor, ref: torch.Tensor) -> float:
    """KL(softmax(ref) || softmax(out)), averaged over the rows: for classifiers' logits."""
    return float(torch.nn.functional.kl_div(out.float().log_softmax(-1), ref.float().log_softmax(-1),
                                            log_target=True, reduction="batchmean"))


def layer_sensitivity(model: nn.Module, config: AffineQuantize | FakeQuantize, x: torch.Tensor,
                      choices: Iterable[int] = WIDTHS,
                      error: Callable[[torch.Tensor, torch.Tensor], float] = output_mse,
                      ) -> dict[str, dict[int, float]]:
    """``{layer: {width: error}}``: ``error(outputs, unquantized outputs)`` on ``x`` when only that
    layer is quantized (default: `output_mse`; `output_kl` for classifiers)."""
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
                out[name][k] = float(error(model(x), ref))
            module.weight.copy_(w)
    return out


def stored_widths(model: nn.Module) -> dict[str, int | None]:
    """Each Linear/Conv layer's quantized width (None where `AffineQuantize` did not quantize it),
    as `save` stores it and `load` gives it back."""
    return {n: None if qparams_of(m) is None else qparams_of(m).bits for n, m in prunable_modules(model)}


def average_bits(model: nn.Module, widths: Mapping[str, int]) -> float:
    """Mean of ``widths`` over all the layers' weights: bits per weight (NaN for a model with none).
    Pruned zeros count like other weights (a sparse layout stores codes for non-zeros only, so
    for a pruned model this overstates the bits stored)."""
    counts = _counts(model)
    total = sum(counts.values())
    return sum(counts[n] * widths[n] for n in counts) / total if total else math.nan


def assign_bits(model: nn.Module, config: Q, x: torch.Tensor, *, budget: float | None = None,
                choices: Iterable[int] = WIDTHS,
                error: Callable[[torch.Tensor, torch.Tensor], float] = output_mse) -> Q:
    """``config`` with ``layer_bits`` chosen for ``model`` from each layer's sensitivity on ``x``.

    budget:  the largest average width (`average_bits`: bits per weight); default: the average
             of the widths ``config`` itself gives (same bytes, placed by sensitivity).
    choices: the widths a layer may get (2..8).
    error:   ``error(outputs, unquantized outputs) -> float`` (see `layer_sensitivity`).
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
    width = _knapsack(counts, layer_sensitivity(model, config, x, widths, error), widths, budget)
    return dataclasses.replace(config, bits_first=None, bits_last=None, layer_bits=tuple(width.items()))


#: Most cost units the search keeps (the budget's bits); larger models count bits in coarser units.
_MAX_UNITS = 1 << 20


def _knapsack(counts: dict[str, int], error: dict[str, dict[int, float]], widths: list[int],
              budget: float) -> dict[str, int]:
    """The widths with the least summed error whose bits (count x width) fit ``budget x total``:
    an exact multiple-choice knapsack by dynamic programming over the bits spent.  Costs are
    counted in units of the counts' common divisor (exact), or coarser for large models, each
    rounded up, so the budget is never exceeded; ties go to the smaller widths."""
    names = list(counts)
    total = sum(counts.values())
    if total == 0:
        return {n: widths[0] for n in names}
    capacity_bits = math.floor(budget * total + 1e-6)
    unit = max(math.gcd(*counts.values()), -(-capacity_bits // _MAX_UNITS))
    capacity = capacity_bits // unit
    inf = float("inf")
    best = np.full(capacity + 1, inf)
    best[0] = 0.0  # best[c]: least error of the layers so far spending exactly c units
    choice = np.zeros((len(names), capacity + 1), dtype=np.int8)
    for i, name in enumerate(names):
        new = np.full(capacity + 1, inf)
        for j, k in enumerate(widths):
            cost = -(-counts[name] * k // unit)
            if cost > capacity:
                break
            cand = np.full(capacity + 1, inf)
            cand[cost:] = best[: capacity + 1 - cost] + error[name][k]
            better = cand < new
            new[better], choice[i][better] = cand[better], j
        best = new
    c = int(np.argmin(best))  # the least error; among equal errors the fewest units
    if not math.isfinite(best[c]):  # only where coarse units rounded the smallest widths over the budget
        return {n: widths[0] for n in names}
    out = {}
    for i in reversed(range(len(names))):
        k = widths[int(choice[i][c])]
        out[names[i]] = k
        c -= -(-counts[names[i]] * k // unit)
    return dict(reversed(out.items()))


def _counts(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in prunable_modules(model)}


def _choices(choices: Iterable[int]) -> list[int]:
    widths = sorted(set(choices))
    if not widths or any(isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 8 for k in widths):
        raise ValueError(f"`choices` must be widths in 2..8, but got choices={list(choices)!r}")
    return widths
