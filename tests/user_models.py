"""User models for `build_model` recipes with arch "hook" (used by the tests)."""

from __future__ import annotations

import torch
import torch.nn as nn


class ResidualMLP(nn.Module):
    """Linear stem, `blocks` residual blocks ``h + W2 relu(W1 h)``, Linear head."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            for _ in range(blocks)
        )
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x.flatten(1)))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def residual_mlp(config: dict) -> nn.Module:
    """Hook: ``{"in_dim": 64, "hidden": 32, "out_dim": 10, "blocks": 2}``."""
    return ResidualMLP(config["in_dim"], config["hidden"], config["out_dim"], config.get("blocks", 1))


def not_a_module(config: dict) -> object:
    """Hook that breaks the contract (returns a dict), for error tests."""
    return {"config": config}


def conv_bn(config: dict) -> nn.Module:
    """Hook: Conv2d + BatchNorm2d stack on (batch, H, W) images, then a Linear head."""
    c, h, w = config["channels"], config["height"], config["width"]
    return nn.Sequential(
        nn.Unflatten(1, (1, h)),
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Flatten(), nn.Linear(c * h * w, config["classes"]),
    )
