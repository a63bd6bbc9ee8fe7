"""Unstructured magnitude pruning of Linear/Conv weights, and mask helpers."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn as nn

from ._config import register
from ._models import prunable_modules

__all__ = ["MagnitudePrune", "sparsity_masks", "apply_masks_", "count_params"]


@dataclasses.dataclass(frozen=True)
class MagnitudePrune:
    """Zero the smallest-magnitude weights of every Linear/Conv1d/Conv2d.

    Set exactly one of:
      sparsity:  fraction in [0, 1) of prunable weights to zero (the smallest |w|).
      threshold: eps >= 0; zero every weight with |w| < eps.
    scope: "global" ranks all prunable weights together; "layer" prunes each
      weight tensor to ``sparsity`` on its own.  (With ``threshold`` both scopes
      give the same result.)  Biases are never pruned; the last layer is.
    """

    VERSION: ClassVar[int] = 1
    sparsity: float | None = None
    threshold: float | None = None
    scope: str = "global"

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError(
                "exactly one of `sparsity` and `threshold` must be set, but got "
                f"sparsity={self.sparsity!r}, threshold={self.threshold!r}; "
                "e.g. MagnitudePrune(sparsity=0.8) or MagnitudePrune(threshold=1e-3)"
            )
        if self.sparsity is not None:
            s = _number("sparsity", self.sparsity)
            if not 0 <= s < 1:
                raise ValueError(f"`0 <= sparsity < 1` must hold, but got sparsity={s!r}")
            object.__setattr__(self, "sparsity", s)
        if self.threshold is not None:
            t = _number("threshold", self.threshold)
            if not (t >= 0 and math.isfinite(t)):
                raise ValueError(
                    f"`threshold >= 0` (and finite) must hold, but got threshold={t!r}"
                )
            object.__setattr__(self, "threshold", t)
        if self.scope not in ("global", "layer"):
            raise ValueError(
                f"`scope` must be 'global' or 'layer', but got scope={self.scope!r}"
            )


def _number(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"`{name}` must be a number, but got {name}={v!r}")
    return float(v)


@register(MagnitudePrune)
def _magnitude_prune(model: nn.Module, config: MagnitudePrune) -> nn.Module:
    weights = [m.weight for _, m in prunable_modules(model)]
    if not weights:
        return model
    with torch.no_grad():
        if config.threshold is not None:
            for w in weights:
                w.masked_fill_(w.abs() < config.threshold, 0.0)
        elif config.scope == "layer":
            for w in weights:
                _zero_smallest_(w.view(-1), round(config.sparsity * w.numel()))
        else:
            flat = torch.cat([w.detach().reshape(-1) for w in weights])
            _zero_smallest_(flat, round(config.sparsity * flat.numel()))
            offset = 0
            for w in weights:
                w.copy_(flat[offset : offset + w.numel()].view_as(w))
                offset += w.numel()
    return model


def _zero_smallest_(flat: torch.Tensor, k: int) -> None:
    """Zero the ``k`` entries of smallest magnitude (ties: lowest index first)."""
    if k <= 0:
        return
    order = torch.argsort(flat.abs(), stable=True)
    flat[order[:k]] = 0.0


def sparsity_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": bool tensor}``: True where a prunable weight is non-zero."""
    return {f"{n}.weight": m.weight.detach() != 0 for n, m in prunable_modules(model)}


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """In place: multiply each named weight by its mask, so pruned weights stay 0.

    Call it after every optimizer step while fine-tuning a pruned model.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise ValueError(
                    f"mask for {name!r} names no parameter of the model; masks must come from "
                    "`sparsity_masks` of this model (after any structural change)"
                )
            p = params[name]
            if mask.shape != p.shape:
                raise ValueError(
                    f"mask shape must equal the parameter's shape, but {name!r} has "
                    f"{tuple(p.shape)} and its mask {tuple(mask.shape)}"
                )
            p.mul_(mask.to(device=p.device, dtype=p.dtype))
    return model


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(parameters, non-zero parameters)`` over all parameters of ``model``."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero
