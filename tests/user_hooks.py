"""A user model hook for sweeps: ``task.model: tests.user_hooks:residual_net``.

The hook contract: ``fn(config) -> nn.Module`` where ``config`` holds ``input_shape``,
``output_dim`` and every parameter of the trial (``depth``, ``width``, user keys, ...).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class ResidualNet(nn.Module):
    def __init__(self, in_dim: int, width: int, out_dim: int, depth: int, gain: float) -> None:
        super().__init__()
        self.stem = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, out_dim)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x.flatten(1)))
        for block in self.blocks:
            h = h + self.gain * torch.relu(block(h))
        return self.head(h)


def residual_net(config: dict) -> nn.Module:
    return ResidualNet(math.prod(config["input_shape"]), int(config["width"]), int(config["output_dim"]),
                       int(config["depth"]), float(config.get("gain", 1.0)))


class _NaNOut(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float("nan")


def fragile(config: dict) -> nn.Module:
    """A hostile hook: width 13 raises in user code, width 7 makes the loss NaN."""
    if config["width"] == 13:
        raise ValueError("width 13 is unlucky")
    net = residual_net(config)
    return _NaNOut(net) if config["width"] == 7 else net


def victim(config: dict) -> nn.Module:
    """Inside a Ray trial, on the first attempt: publish this worker's pid and wait to be killed.

    ``config["marker_dir"]`` is a folder shared with the test; the test writes ``killed`` there
    and then SIGKILLs the pid, so the retried trial (a new worker) goes on normally.
    """
    import os
    import time
    from pathlib import Path

    import ray

    marker = Path(config["marker_dir"])
    in_trial = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    if in_trial and not (marker / "killed").exists():
        (marker / "pid").write_text(str(os.getpid()))
        time.sleep(120)
    return residual_net(config)


def not_a_model(config: dict):
    return "a string"


class NormNet(nn.Module):
    """Linear layers with LayerNorm and GroupNorm between them (structured pruning resizes both)."""

    def __init__(self, in_dim: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU(),
                                 nn.Linear(width, width), nn.GroupNorm(4, width), nn.ReLU(), nn.Linear(width, out_dim))
        self.gain = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)) * self.gain


def norm_net(config: dict) -> nn.Module:
    return NormNet(math.prod(config["input_shape"]), int(config.get("width", 32)), int(config["output_dim"]))


def smooth_train(model, data, config, ctx) -> None:
    """A user's training loop (``task.train``): SGD with momentum, label smoothing and random
    shifts of the input by up to 2 positions; records each phase it ran in ``marker_dir``."""
    import pathlib

    if config.get("marker_dir"):
        with open(pathlib.Path(config["marker_dir"]) / "phases.txt", "a") as f:
            f.write(f"{ctx.phase} {ctx.epochs} {ctx.device} {ctx.teacher is not None}\n")
    x = torch.tensor(np.array(data.x_train), dtype=torch.float32)
    y = torch.tensor(np.array(data.y_train)).long()
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=0.9)
    gen = torch.Generator().manual_seed(int(config.get("width", 0)))
    for epoch in range(1, ctx.epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(int(config.get("batch_size", 64))):
            shift = int(torch.randint(-2, 3, (1,), generator=gen))
            xb = torch.roll(x[idx], shifts=shift, dims=-1).to(ctx.device)
            loss = nn.functional.cross_entropy(model(xb), y[idx].to(ctx.device), label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ctx.after_step(model)
        ctx.report(epoch)  # slimtune evaluates the validation split


def forgetful_train(model, data, config, ctx) -> None:
    """A training loop that never calls ``ctx.after_step``: pruned weights would grow back."""
    x = torch.tensor(np.array(data.x_train), dtype=torch.float32)
    y = torch.tensor(np.array(data.y_train)).long()
    opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
    for _ in range(ctx.epochs):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def token_data() -> tuple[np.ndarray, np.ndarray]:
    """Token ids (integers 0..29, sequences of 12) labelled by which of 4 marker tokens occurs most."""
    rng = np.random.default_rng(0)
    x = rng.integers(4, 30, (600, 12))
    y = rng.integers(0, 4, 600)
    for row, label in zip(x, y):
        row[rng.choice(12, 4, replace=False)] = label
    return x, y


class TokenNet(nn.Module):
    """An embedding bag of token ids, then a linear head."""

    def __init__(self, vocab: int, dim: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(1))


def token_net(config: dict) -> nn.Module:
    return TokenNet(30, int(config.get("width", 16)), int(config["output_dim"]))
