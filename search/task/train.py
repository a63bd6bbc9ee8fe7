"""A plain training loop and evaluation. The trial function calls these; nothing here knows Ray."""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    if kind == "classification":
        yt = torch.from_numpy(np.array(y)).long()
    else:
        yt = torch.from_numpy(np.array(y, dtype=np.float32))
    return xt, yt


#: Learning-rate schedules (``space.lr_schedule``): the factor multiplying ``lr`` at each step.
SCHEDULES = ("constant", "wsd", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule over one training run of ``total`` optimizer steps.

    ``constant``: ``lr`` throughout. ``wsd`` (warm-up, stable, decay): linear warm-up over the
    first ``warmup`` fraction of the steps, ``lr`` after it, then linear decay to ~0 over the
    last ``decay`` fraction (the last step runs at ``lr / decay_steps``). ``cosine``: the same
    warm-up, then a cosine from ``lr`` to ~0 over the rest. Each schedule ends at its own
    budget, so a longer budget is a new run that decays at its own end, never a continuation.
    """

    kind: str = "constant"
    warmup: float = 0.0
    decay: float = 0.0

    def factor(self, step: int, total: int) -> float:
        """The multiplier of ``lr`` at optimizer step ``step`` (0-based) of ``total``."""
        if self.kind == "constant" or total <= 0:
            return 1.0
        w = round(self.warmup * total)
        if step < w:
            return (step + 1) / w
        if self.kind == "wsd":
            d = round(self.decay * total)
            return 1.0 if step < total - d else (total - step) / d
        rest = max(1, total - w)
        return 0.5 * (1.0 + math.cos(math.pi * (step - w) / rest))

    def finetune(self) -> Schedule:
        """The schedule of a fine-tuning phase (after pruning, QAT) under this one: no warm-up,
        decay over the whole phase (linear for wsd, cosine for cosine); constant stays constant."""
        return self if self.kind == "constant" else Schedule(self.kind, 0.0, 1.0)


CONSTANT = Schedule()


def _loss_fn(kind: str):
    if kind == "classification":
        return nn.functional.cross_entropy
    return lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y)


@dataclass(frozen=True)
class Fit:
    """How to train: Adam at ``lr`` (and ``weight_decay``) with batches of ``batch_size`` for
    ``epochs`` whole passes, shuffled from ``seed``; ``schedule`` sets each step's learning rate."""

    lr: float
    batch_size: int
    epochs: int
    seed: int
    weight_decay: float = 0.0
    schedule: Schedule = CONSTANT


def train(
    model: nn.Module,
    data: Data,
    fit: Fit,
    *,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam on ``data``'s training split, as ``fit`` says.

    ``after_step(model)`` runs after each optimizer step (pruning masks keep zeros at zero
    during fine-tuning); ``on_epoch(epoch, val_metrics)`` after each epoch.
    Raises :class:`TrainingDiverged` when the loss stops being finite.
    """
    lr, batch_size, epochs, schedule = fit.lr, fit.batch_size, fit.epochs, fit.schedule
    seed, weight_decay = fit.seed, fit.weight_decay
    x, y = _tensors(data.x_train, data.y_train, data.kind)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = _loss_fn(data.kind)
    n = len(x)
    total, step = epochs * -(-n // batch_size), 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            if schedule.kind != "constant":
                for group in opt.param_groups:
                    group["lr"] = lr * schedule.factor(step, total)
            step += 1
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
