"""Unstructured magnitude pruning of Linear/Conv weights, mask helpers, and
gradual (cubic-schedule) pruning during fine-tuning."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from ._config import register
from ._models import prunable_modules

__all__ = [
    "MagnitudePrune",
    "apply_masks_",
    "count_params",
    "cubic_sparsity",
    "gradual_pruning",
    "sparsity_masks",
]


@dataclasses.dataclass(frozen=True)
class MagnitudePrune:
    """Zero the smallest-magnitude weights of every Linear, Conv, ConvTranspose and Embedding layer.

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
    weights = [_weight_param(m) for _, m in prunable_modules(model)]
    if not weights:
        return model
    with torch.no_grad():
        if config.threshold is not None:
            for w in weights:
                w.masked_fill_(w.abs() < config.threshold, 0.0)
        else:
            _prune_to_(weights, config.sparsity, config.scope)
    return model


def _prune_to_(weights: list[torch.Tensor], sparsity: float, scope: str) -> None:
    """Zero the smallest-|w| fraction ``sparsity`` of ``weights`` (together or per tensor)."""
    if scope == "layer":
        for w in weights:
            _zero_smallest_(w.view(-1), round(sparsity * w.numel()))
        return
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    _zero_smallest_(flat, round(sparsity * flat.numel()))
    offset = 0
    for w in weights:
        w.copy_(flat[offset : offset + w.numel()].view_as(w))
        offset += w.numel()


def _weight_param(module: nn.Module) -> torch.Tensor:
    """The stored weight tensor (under a QAT parametrization: the latent fp32 weight)."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations["weight"].original
    return module.weight


def _zero_smallest_(flat: torch.Tensor, k: int) -> None:
    """Zero the ``k`` entries of smallest magnitude (ties: lowest index first)."""
    if k <= 0:
        return
    order = torch.argsort(flat.abs(), stable=True)
    flat[order[:k]] = 0.0


def sparsity_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": bool tensor}``: True where a prunable weight is non-zero."""
    return {f"{n}.weight": _weight_param(m).detach() != 0 for n, m in prunable_modules(model)}


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """In place: multiply each named weight by its mask, so pruned weights stay 0.

    Call it after every optimizer step while fine-tuning a pruned model.
    """
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            owner, _, attr = name.rpartition(".")
            if attr == "weight" and owner in modules:  # also finds a QAT's latent weight
                params.setdefault(name, _weight_param(modules[owner]))
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


def cubic_sparsity(step: int, steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: s_t = s_f + (s_i - s_f) * (1 - t / n)**3 for 0 <= t <= n.

    ``step`` is t (counted from the start of pruning, t0 = 0), ``steps`` is n*dt.
    Before step 0 it is ``initial``; from ``steps`` on it stays at ``final``.
    Pruning fast while the network is redundant and slowly near the end.
    """
    if steps <= 0:
        return float(final)
    frac = min(max(step / steps, 0.0), 1.0)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


def gradual_pruning(
    model: nn.Module, config: MagnitudePrune, steps: int, *, ramp: float = 0.75, every: int = 1
) -> Callable[[nn.Module], None]:
    """An ``after_step(model)`` callback that prunes ``model`` gradually while it trains.

    Call it after every optimizer step of a loop of ``steps`` steps (e.g.
    ``search.train(..., after_step=gradual_pruning(model, cfg, steps))``).  Over
    the first ``ramp`` fraction of the steps the sparsity rises from the
    model's current one to the config's, along `cubic_sparsity`; the weights
    are re-pruned by magnitude every ``every`` steps (ranked as the config's
    ``scope`` says) and held at zero in between, so the last steps fine-tune
    the final mask.  With a ``threshold`` config the final sparsity is the
    fraction of prunable weights below the threshold when the callback is made
    (ranked globally).  After ``steps`` calls the model has that sparsity.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps >= 1` (int) must hold, but got steps={steps!r}")
    if not 0 < ramp <= 1:
        raise ValueError(f"`0 < ramp <= 1` must hold, but got ramp={ramp!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"`every >= 1` (int) must hold, but got every={every!r}")
    weights = [_weight_param(m) for _, m in prunable_modules(model)]
    total = sum(w.numel() for w in weights)
    if config.sparsity is not None:
        final, scope = config.sparsity, config.scope
    else:
        below = sum(int((w.detach().abs() < config.threshold).sum()) for w in weights)
        final, scope = below / max(1, total), "global"
    initial = sum(int((w.detach() == 0).sum()) for w in weights) / max(1, total)
    initial = min(initial, final)
    ramp_steps = max(1, round(ramp * steps))
    state = {"step": 0, "masks": sparsity_masks(model)}

    def after_step(m: nn.Module) -> None:
        state["step"] += 1
        t = state["step"]
        apply_masks_(m, state["masks"])  # zeros stay zero (Adam's momentum would revive them)
        if t <= ramp_steps and (t % every == 0 or t == ramp_steps):
            target = cubic_sparsity(t, ramp_steps, final, initial)
            with torch.no_grad():
                _prune_to_([_weight_param(mod) for _, mod in prunable_modules(m)], target, scope)
            state["masks"] = sparsity_masks(m)

    return after_step


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(parameters, non-zero parameters)`` over all parameters of ``model``."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero
