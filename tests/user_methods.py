"""A toy compression method and a toy metric, as a user would write them (tests/test_declared_once.py).

The method is a frozen config plus its function, registered with ``compress.register`` when this
module is imported (a Ray worker imports it through the declaration's ``"module:Class"``). Its
spec keys and the metric are declared in the test (``spaces.declare``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimtune import compress


@dataclass(frozen=True)
class RoundWeights:
    """Round every Linear/Conv weight to a multiple of ``step``."""

    step: float = 0.05


@compress.register(RoundWeights)
def round_weights(model: nn.Module, config: RoundWeights) -> nn.Module:
    with torch.no_grad():
        for _, module in compress.prunable_modules(model):
            module.weight.copy_(torch.round(module.weight / config.step) * config.step)
    return model


def weight_l1(model: nn.Module, data) -> float:
    """Sum of |w| over the weights of the compressed model."""
    return float(sum(module.weight.abs().sum() for _, module in compress.prunable_modules(model)))
