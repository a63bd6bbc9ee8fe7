"""The sweep spec: loaded from YAML once, validated once, frozen.

This module holds the typed values; :mod:`spaces._parse` is the one place where raw YAML becomes
them. Nothing past :func:`load_spec` / :func:`parse_spec` re-checks the values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from spaces._distributions import (
    Fixed,
    Param,
    suggest,
)
from spaces._methods import Section, default_sections, sample_section

BUILTIN_DATASETS = ("digits", "mnist1d")
BUILTIN_MODELS = ("mlp", "cnn")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
#: Hyperparameters the built-in models and the trainer understand, with their defaults.
SPACE_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "batch_size": 64,
    "depth": 2,
    "width": 64,
    "weight_decay": 0.0,
}
#: Learning-rate schedules (``space.lr_schedule``; see ``search.task.train.Schedule``).
LR_SCHEDULES = ("constant", "wsd", "cosine")
#: Space keys of the schedule, present only when the spec sets ``lr_schedule``; ``warmup`` and
#: ``decay`` (fractions of the training's steps) default to these when it does.
SCHEDULE_DEFAULTS: dict[str, Any] = {"lr_schedule": "constant", "warmup": 0.05, "decay": 0.2}
HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "max" | "min"


@dataclass(frozen=True)
class Bound:
    metric: str
    min: float | None = None
    max: float | None = None

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 means satisfied."""
        v = float("-inf")
        if self.min is not None:
            v = max(v, self.min - value)
        if self.max is not None:
            v = max(v, value - self.max)
        return v


@dataclass(frozen=True)
class Task:
    dataset: str
    model: str
    epochs: Param
    target: str | None = None
    kind: str | None = None  # None: inferred from the target when the data is loaded
    validation_split: float = 0.2
    test_split: float = 0.2  # ignored by mnist1d, which has its published 4000/1000 split
    split_seed: int = 0  # seeds the test and validation splits: the same for every sweep of the task

    @property
    def dataset_is_hook(self) -> bool:
        return bool(HOOK.fullmatch(self.dataset)) and not self.dataset.endswith((".csv", ".npz"))

    @property
    def model_is_hook(self) -> bool:
        return self.model not in BUILTIN_MODELS


@dataclass(frozen=True)
class Search:
    trials: int = 20
    concurrency: int = 2
    sampler: str = "tpe"
    seed: int = 0
    retries: int = 2  # re-runs of a trial whose worker process or node died (never for errors it raised)
    ladder: int = 0  # extra compression settings evaluated on each trained model ("train once, compress many")
    early_stop: "EarlyStop | None" = None  # stop trials that cannot reach the front at their size
    reject_infeasible: bool = True  # skip, untrained, configurations whose predicted size breaks a constraint
    reproducible: bool = False  # ask in batches of `concurrency`, tell at batch ends: same rows at any timing
    promote: Promote | None = None  # start configurations short, retrain the best for their size longer


@dataclass(frozen=True)
class Promote:
    """Successive halving over epoch budgets: new configurations train ``rungs[0]`` epochs; of
    the configurations that finished a rung, the best ``keep`` fraction by nondominated rank
    are retrained from scratch at the next rung's budget."""

    rungs: tuple[int, ...] = (1, 3)
    keep: float = 1 / 3


@dataclass(frozen=True)
class EarlyStop:
    grace_epochs: int = 2
    eta: float = 3.0
    min_peers: int = 4


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Spec:
    name: str
    task: Task
    objectives: tuple[Objective, ...]
    space: tuple[tuple[str, Param], ...]
    constraints: tuple[Bound, ...] = ()
    #: One section per declared compression method (spaces._methods), in declaration order.
    compress: tuple[Section, ...] = field(default_factory=default_sections)
    search: Search = field(default_factory=Search)
    resources: Resources = field(default_factory=Resources)
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def metric_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def prune(self) -> Section:
        return self.section("prune")

    @property
    def quantize(self) -> Section:
        return self.section("quantize")

    def section(self, name: str) -> Section:
        """The spec's values of the compression method ``name`` (``compress.<name>``)."""
        return next(s for s in self.compress if s.declared.name == name)

    @property
    def compress_columns(self) -> list[str]:
        """``epochs`` and the column of every compression key, in the order they are drawn."""
        return ["epochs", *(c for s in self.compress for c in s.declared.columns)]

    def sample(self, trial: Any) -> dict[str, Any]:
        """The define-by-run function: draw one configuration from an Optuna-style ``trial``.

        The space, ``epochs``, then each compression method's keys in declaration order, each
        drawn only where its conditions hold (``spaces._methods``: e.g. ``threshold``, when the
        spec sets one, instead of ``sparsity`` for magnitude pruning; ``qat_epochs`` when
        ``quant_mode == "qat"``). Returns every parameter, drawn or fixed, named as in the
        results table.
        """
        cfg: dict[str, Any] = {name: suggest(trial, name, p) for name, p in self.space}
        cfg["epochs"] = suggest(trial, "epochs", self.task.epochs)
        for section in self.compress:
            sample_section(section, trial, cfg)
        return cfg

    @property
    def searched(self) -> list[str]:
        """The names of the parameters that take more than one value (space, epochs, compress)."""
        params = [*self.space, ("epochs", self.task.epochs),
                  *((f"{s.declared.name}.{k}", v) for s in self.compress for k, v in s.values)]
        return [name for name, p in params if p is not None and not isinstance(p, Fixed)]

    def for_kind(self, kind: str) -> "Spec":
        """This spec once the data's task kind is known: objectives the user did not write
        follow the kind (``r2`` for regression, ``accuracy`` for classification)."""
        if "objectives" in self.source or self.task.kind is not None:
            return self
        import dataclasses

        from spaces._parse import _parse_objectives

        return dataclasses.replace(self, objectives=_parse_objectives(None, kind))

    def constraint_values(self, metrics: Mapping[str, float]) -> list[float]:
        return [b.violation(float(metrics[b.metric])) for b in self.constraints]
