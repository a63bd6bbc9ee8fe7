"""A plain training loop and evaluation. The trial function calls these; nothing here knows Ray."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from slimtune.search.task.data import Data
from slimtune.spaces import DISTILL, task_metric


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite: a deterministic failure, never retried."""


def _tensors(x: np.ndarray, y: np.ndarray, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Arrays from Ray's object store are read-only; torch wants writable memory. Integer features
    # (token ids) reach the model as torch.long.
    xt = torch.from_numpy(np.array(x, dtype=np.int64 if np.asarray(x).dtype.kind in "iu" else np.float32))
    if kind == "classification":
        yt = torch.from_numpy(np.array(y)).long()
    else:
        yt = torch.from_numpy(np.array(y, dtype=np.float32))
    return xt, yt


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
class Distill:
    """Knowledge distillation: the loss also follows ``teacher`` (kept in eval mode, no gradient).

    loss = (1 - weight) * task loss + weight * distillation loss, where the distillation loss is
    ``temperature**2 * KL(softmax(teacher / T) || softmax(student / T))`` for classification
    (Hinton et al.; T**2 keeps its gradients' scale as T changes) and the MSE to the teacher's
    outputs for regression.
    """

    teacher: nn.Module
    weight: float
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 1 or not self.temperature > 0:
            raise ValueError(f"Distill: `0 <= weight <= 1` and `temperature > 0` must hold, but got "
                             f"(weight={self.weight}, temperature={self.temperature})")

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's outputs for ``x`` (computed once per training run)."""
        self.teacher.eval()
        return torch.cat([self.teacher(x[i:i + 4096]) for i in range(0, len(x), 4096)])

    def loss(self, out: torch.Tensor, target: torch.Tensor, task_loss: torch.Tensor, kind: str) -> torch.Tensor:
        """The mixed loss of the student's outputs ``out`` given the teacher's ``target``."""
        if kind == "classification":
            t = self.temperature
            kd = t * t * nn.functional.kl_div(nn.functional.log_softmax(out / t, dim=-1),
                                              nn.functional.log_softmax(target / t, dim=-1),
                                              reduction="batchmean", log_target=True)
        else:
            kd = nn.functional.mse_loss(out, target)
        return (1 - self.weight) * task_loss + self.weight * kd


def distill_of(config: dict[str, Any], teacher: nn.Module | None) -> Distill | None:
    """The distillation a trial's ``config`` asks for (``compress.distill``: ``distill_weight`` > 0,
    ``distill_temperature``) from ``teacher``; None without a teacher or a weight."""
    weight, temperature = (config.get(DISTILL.key(k).col) for k in ("weight", "temperature"))
    if teacher is None or weight is None or weight != weight or float(weight) == 0:
        return None
    if temperature is None or temperature != temperature:  # not drawn (NaN in a row): the declared default
        temperature = DISTILL.key("temperature").default
    return Distill(teacher, float(weight), float(temperature))


@dataclass(frozen=True)
class Fit:
    """How to train: Adam at ``lr`` (and ``weight_decay``) with batches of ``batch_size`` for
    ``epochs`` whole passes, shuffled from ``seed``; ``schedule`` sets each step's learning rate;
    ``distill``: also learn from a teacher (None: from the labels only); ``device``: where the
    model, the batches and the teacher are while training (the model is back on the CPU after)."""

    lr: float
    batch_size: int
    epochs: int
    seed: int
    weight_decay: float = 0.0
    schedule: Schedule = CONSTANT
    distill: Distill | None = None
    device: str = "cpu"
    #: A user's training loop (``task.train``): ``loop(model, data, params, ctx)`` trains instead of
    #: Adam here, with ``params`` the trial's parameters and ``ctx`` a :class:`TrainContext`.
    loop: Callable[..., Any] | None = field(default=None, compare=False)
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    phase: str = "train"


def train(
    model: nn.Module,
    data: Data,
    fit: Fit,
    *,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam on ``data``'s training split, as ``fit`` says (with
    ``fit.distill``: learning from its teacher as well as from the labels).

    ``after_step(model)`` runs after each optimizer step (pruning masks keep zeros at zero
    during fine-tuning); ``on_epoch(epoch, val_metrics)`` after each epoch.
    Raises :class:`TrainingDiverged` when the loss stops being finite.
    """
    device = torch.device(fit.device)
    model.to(device)
    try:
        if fit.loop is not None:
            _user_loop(model, data, fit, device, (after_step, on_epoch))
        else:
            _fit(model, data, fit, device, (after_step, on_epoch))
    finally:
        model.to("cpu")  # compression, measurement and the artifact work on CPU tensors
    return model


class UserLoopError(ValueError):
    """A user's training loop broke its contract (one clear error for that trial)."""


@dataclass
class TrainContext:
    """What a user's training loop (``task.train``) gets besides the model, the data and the
    trial's parameters: ``device`` (where the model is: put batches there), ``epochs`` (this
    phase's budget), ``phase`` (``train``, ``finetune`` after pruning, ``qat``), ``teacher``
    (distillation's teacher on ``device``, or None), ``kind`` and ``metric`` (the task's). Call
    ``after_step(model)`` after every optimizer step (it keeps pruned weights at zero and runs
    gradual pruning) and ``report(epoch, **metrics)`` after an epoch (early stopping and
    promotion read it; without the task's ``metric`` slimtune evaluates the validation split)."""

    device: torch.device
    epochs: int
    phase: str
    teacher: nn.Module | None
    kind: str
    metric: str
    hooks: tuple = field(default=(None, None), repr=False)
    data: Data | None = field(default=None, repr=False)
    model: nn.Module | None = field(default=None, repr=False)
    steps: int = 0
    reports: int = 0

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.hooks[0] is not None:
            self.hooks[0](model)

    def report(self, epoch: int, **metrics: float) -> None:
        self.reports += 1
        if self.hooks[1] is None:
            return
        if self.metric not in metrics or "loss" not in metrics:
            metrics = {**evaluate(self.model, self.data.x_val, self.data.y_val, self.kind), **metrics}
        self.hooks[1](int(epoch), {k: float(v) for k, v in metrics.items()})


def _user_loop(model: nn.Module, data: Data, fit: Fit, device: torch.device, hooks: tuple) -> None:
    teacher = fit.distill.teacher.to(device) if fit.distill is not None and fit.distill.weight > 0 else None
    ctx = TrainContext(device, fit.epochs, fit.phase, teacher, data.kind, task_metric(data.kind), hooks, data, model)
    try:
        fit.loop(model, data, dict(fit.params), ctx)
    finally:
        if teacher is not None:
            teacher.to("cpu")
    if hooks[0] is not None and ctx.steps == 0 and fit.epochs > 0:
        raise UserLoopError(f"task.train: the training loop must call ctx.after_step(model) after each optimizer "
                            f"step in the {fit.phase} phase (it keeps pruned weights at zero), but it never did")
    if hooks[1] is not None and ctx.reports == 0:  # early stopping and the teacher's score need one
        ctx.report(fit.epochs)


def _fit(model: nn.Module, data: Data, fit: Fit, device: torch.device, hooks: tuple) -> None:
    after_step, on_epoch = hooks
    lr, batch_size, epochs, schedule = fit.lr, fit.batch_size, fit.epochs, fit.schedule
    x, y = (t.to(device) for t in _tensors(data.x_train, data.y_train, data.kind))
    gen = torch.Generator().manual_seed(fit.seed)  # on the CPU: the same order on every device
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=fit.weight_decay)
    loss_fn = _loss_fn(data.kind)
    distill = fit.distill if fit.distill is not None and fit.distill.weight > 0 else None
    soft = None
    if distill is not None:
        distill.teacher.to(device)
        try:
            soft = distill.targets(x)
        finally:
            distill.teacher.to("cpu")
    n = len(x)
    total, step = epochs * -(-n // batch_size), 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            if schedule.kind != "constant":
                for group in opt.param_groups:
                    group["lr"] = lr * schedule.factor(step, total)
            step += 1
            opt.zero_grad(set_to_none=True)
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            if distill is not None:
                loss = distill.loss(out, soft[idx], loss, data.kind)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"training diverged: loss={loss.item()} at epoch {epoch} (lr={lr:g})")
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
        if on_epoch is not None:
            on_epoch(epoch, evaluate(model, data.x_val, data.y_val, data.kind))


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, kind: str) -> dict[str, float]:
    """``{"loss", <the task's metric>}``: accuracy for classification, r2 for regression
    (``spaces.TASK_METRIC``)."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device  # where the model is (the trial's device)
    xt, yt = _tensors(x, y, kind)
    out = torch.cat([model(xt[i:i + 4096].to(device)).cpu() for i in range(0, len(xt), 4096)])
    loss = float(_loss_fn(kind)(out, yt))
    if kind == "classification":
        return {"loss": loss, task_metric(kind): float((out.argmax(-1) == yt).float().mean())}
    pred = out.squeeze(-1)
    ss_res = float(((pred - yt) ** 2).sum())
    ss_tot = float(((yt - yt.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else -math.inf)
    return {"loss": loss, task_metric(kind): r2}
