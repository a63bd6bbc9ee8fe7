"""Structured (channel) pruning with Torch-Pruning's DependencyGraph.

Whole output channels/features are removed from Linear/Conv layers together
with every coupled tensor (the next layer's inputs, residual branches), so the
tensors physically shrink.  The layers that produce the model's output are
kept whole so the output shape does not change.  `save` stores the shrunk
shapes and `load` rebuilds the recipe's model and resizes it to them.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn as nn

from ._config import register
from ._models import CHANNEL_PRUNABLE, recipe_of

__all__ = ["StructuredPrune"]


@dataclasses.dataclass(frozen=True)
class StructuredPrune:
    """Remove the fraction ``ratio`` in [0, 1) of channels of every prunable layer.

    Channels are ranked by the L2 norm of their coupled weights (Torch-Pruning's
    GroupMagnitudeImportance), layer by layer.  The model must come from
    `build_model` with an ``input_shape`` (it is traced on a zero input).
    """

    VERSION: ClassVar[int] = 1
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise TypeError(f"`ratio` must be a number, but got ratio={self.ratio!r}")
        if not 0 <= self.ratio < 1:
            raise ValueError(f"`0 <= ratio < 1` must hold, but got ratio={self.ratio!r}")
        object.__setattr__(self, "ratio", float(self.ratio))


@register(StructuredPrune)
def _structured_prune(model: nn.Module, config: StructuredPrune) -> nn.Module:
    import torch_pruning as tp  # optional dependency, only needed here

    recipe = recipe_of(model)
    if recipe is None or "input_shape" not in recipe:
        raise ValueError(
            "StructuredPrune traces the model on an example input, so the model must come "
            "from `compress.build_model` with a recipe that has `input_shape`, e.g. "
            "{'arch': 'hook', 'hook': ..., 'input_shape': [64]}"
        )
    if config.ratio == 0:
        return model
    example = _example(model, recipe["input_shape"])
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=config.ratio,
            ignored_layers=_output_layers(graph),
        )
        pruner.step()
    return model


def _example(model: nn.Module, shape: list[int]) -> torch.Tensor:
    """A one-row input the model runs on: zeros, as token ids (long) for a model that does not
    take floats (an Embedding first)."""
    x = torch.zeros(1, *shape)
    try:
        with torch.no_grad():
            model.eval()(x)
    except (RuntimeError, TypeError, IndexError):
        return x.long()
    return x


def _output_layers(graph: object) -> list[nn.Module]:
    """Prunable layers whose outputs reach the model output without another one."""
    nodes = list(graph.module2node.values())  # type: ignore[attr-defined]
    found: list[nn.Module] = []
    stack = [n for n in nodes if not n.outputs]
    seen = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, CHANNEL_PRUNABLE):
            if node.module not in found:
                found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


