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


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny's ResNet-8 (image classification): a 3x3 stem, three residual stages of widths
    w, 2w, 4w (the last two at stride 2, 1x1 convolution shortcuts), BatchNorm, global average
    pooling and a linear head; here on one-channel images such as 8x8 digits."""

    def __init__(self, height: int, width: int, classes: int, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Unflatten(1, (1, height)), nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w),
                                  nn.ReLU())
        self.stages = nn.Sequential(_ResBlock(w, w, 1), _ResBlock(w, 2 * w, 2), _ResBlock(2 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet8(config: dict) -> nn.Module:
    h, w = config["input_shape"]
    return ResNet8(h, w, int(config["output_dim"]), int(config.get("width", 16)))


class DSCNN(nn.Module):
    """A small depthwise-separable CNN (DS-CNN, as in keyword spotting) on 1-D sequences such as
    MNIST-1D: a strided stem, ``blocks`` of depthwise 3-tap + pointwise convolutions with
    BatchNorm, global average pooling and a linear head."""

    def __init__(self, length: int, classes: int, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Unflatten(1, (1, length)), nn.Conv1d(1, width, 5, stride=2, padding=2),
                                   nn.BatchNorm1d(width), nn.ReLU()]
        for _ in range(blocks):
            layers += [nn.Conv1d(width, width, 3, padding=1, groups=width), nn.BatchNorm1d(width), nn.ReLU(),
                       nn.Conv1d(width, width, 1), nn.BatchNorm1d(width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def ds_cnn(config: dict) -> nn.Module:
    return DSCNN(int(config["input_shape"][0]), int(config["output_dim"]), int(config.get("width", 16)),
                 int(config.get("depth", 2)))
