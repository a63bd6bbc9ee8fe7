"""A plain training loop and evaluation. The trial function calls these; nothing here knows Ray."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from search.task.data import Data
from spaces import task_metric


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite: a deterministic failure, never retried."""


def _tensors(x: np.ndarray, y: np.ndarray, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Arrays from Ray's object store are read-only; torch wants writable memory.
    xt = torch.from_numpy(np.array(x, dtype=np.float32))
    yt = torch.from_numpy(np.array(y)).long() if kind == "classification" else torch.from_numpy(np.array(y, dtype=np.float32))
    return xt, yt


def _loss_fn(kind: str):
    if kind == "classification":
        return nn.functional.cross_entropy
    return lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y)


def train(
    model: nn.Module,
    data: Data,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    weight_decay: float = 0.0,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam on ``data``'s training split.

    ``after_step(model)`` runs after each optimizer step (pruning masks keep zeros at zero
    during fine-tuning); ``on_epoch(epoch, val_metrics)`` after each epoch.
    Raises :class:`TrainingDiverged` when the loss stops being finite.
    """
    x, y = _tensors(data.x_train, data.y_train, data.kind)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = _loss_fn(data.kind)
    n = len(x)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"training diverged: loss={loss.item()} at epoch {epoch} (lr={lr:g})")
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
        if on_epoch is not None:
            on_epoch(epoch, evaluate(model, data.x_val, data.y_val, data.kind))
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, kind: str) -> dict[str, float]:
    """``{"loss", <the task's metric>}``: accuracy for classification, r2 for regression
    (``spaces.TASK_METRIC``)."""
    model.eval()
    xt, yt = _tensors(x, y, kind)
    out = torch.cat([model(xt[i:i + 4096]) for i in range(0, len(xt), 4096)])
    loss = float(_loss_fn(kind)(out, yt))
    if kind == "classification":
        return {"loss": loss, task_metric(kind): float((out.argmax(-1) == yt).float().mean())}
    pred = out.squeeze(-1)
    ss_res = float(((pred - yt) ** 2).sum())
    ss_tot = float(((yt - yt.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else -math.inf)
    return {"loss": loss, task_metric(kind): r2}
