"""The sweep spec: loaded from YAML once, validated once, frozen.

This module holds the typed values; :mod:`spaces._parse` is the one place where raw YAML becomes
them. Nothing past :func:`load_spec` / :func:`parse_spec` re-checks the values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from slimtune.spaces._distributions import (
    Fixed,
    Param,
    suggest,
)
from slimtune.spaces._methods import Section, default_sections, sample_section

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
#: What each key of ``space:`` that slimtune understands means (the generated spec reference shows it).
SPACE_DOCS: dict[str, str] = {
    "lr": "Adam's learning rate (> 0)",
    "batch_size": "training batch size (integer >= 1)",
    "depth": "hidden layers of the built-in mlp, convolution blocks of the built-in cnn (integer >= 1)",
    "width": "units per hidden layer (mlp) or channels per block (cnn) (integer >= 1)",
    "weight_decay": "Adam's weight decay (>= 0)",
    "lr_schedule": "constant (Adam at lr throughout), wsd (linear warm-up, lr, then linear decay to about zero "
                   "over the last decay fraction) or cosine (the same warm-up, then a half cosine to about zero); "
                   "fine-tuning and QAT then decay over their own epochs too",
    "warmup": "with lr_schedule: the warm-up's fraction of the training's steps (0 <= warmup < 1)",
    "decay": "with lr_schedule wsd: the decay's fraction of the steps (0 <= decay <= 1, warmup + decay <= 1)",
}


def _doc(text: str, **kw: Any) -> Any:
    """A dataclass field with its one-line description (the generated spec reference shows it)."""
    return field(metadata={"doc": text}, **kw)


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
    dataset: str = _doc("digits | mnist1d | a .csv or .npz path | module:function returning (x, y) (required)")
    model: str = _doc("mlp | cnn | module:function, a function build(config) -> torch.nn.Module")
    epochs: Param = _doc("training epochs (fixed or searched); set by search.promote.rungs when promoting")
    target: str | None = _doc(".csv only: the label column (default: the last column)", default=None)
    kind: str | None = _doc("classification | regression (default: inferred from the target when the data is "
                            "loaded)", default=None)
    validation_split: float = _doc("fraction of the training data kept for validation (what the search sees)",
                                   default=0.2)
    test_split: float = _doc("fraction held out for testing, never searched on (mnist1d keeps its published "
                             "4000/1000 split)", default=0.2)
    split_seed: int = _doc("seeds the test and validation splits: the same for every sweep of the task, "
                           "whatever search.seed", default=0)
    train: str | None = _doc("module:function, your training loop train(model, data, config, ctx) used for every "
                             "training phase (train, finetune, qat) instead of slimtune's Adam loop; see the "
                             "getting-started guide (default: slimtune's loop)", default=None)

    @property
    def dataset_is_hook(self) -> bool:
        return bool(HOOK.fullmatch(self.dataset)) and not self.dataset.endswith((".csv", ".npz"))

    @property
    def model_is_hook(self) -> bool:
        return self.model not in BUILTIN_MODELS


@dataclass(frozen=True)
class Search:
    trials: int = _doc("new configurations to train (promotions and ladder rungs come on top)", default=20)
    concurrency: int = _doc("trials running at once", default=2)
    sampler: str = _doc("Optuna's sampler: tpe | nsga2 | gp | random", default="tpe")
    seed: int = _doc("seeds the sampler and, with the trial number, each trial", default=0)
    retries: int = _doc("re-runs of a trial whose worker process or node died (never of errors it raised)",
                        default=2)
    ladder: int = _doc("extra compression settings evaluated on each trained model (train once, compress many)",
                       default=0)
    early_stop: "EarlyStop | None" = _doc("true, false or a mapping: stop trials that cannot reach the front at "
                                          "their size", default=None)
    reject_infeasible: bool = _doc("never train configurations whose predicted size surely breaks a constraint",
                                   default=True)
    reproducible: bool = _doc("ask in batches, tell at batch ends: the same rows at any concurrency and timing",
                              default=False)
    promote: Promote | None = _doc("train new configurations short, retrain the best for their size longer",
                                   default=None)


@dataclass(frozen=True)
class Promote:
    """Successive halving over epoch budgets: new configurations train ``rungs[0]`` epochs; of
    the configurations that finished a rung, the best ``keep`` fraction by nondominated rank
    are retrained from scratch at the next rung's budget."""

    rungs: tuple[int, ...] = _doc("at least 2 increasing epoch budgets, e.g. [5, 15, 45] (required)", default=(1, 3))
    keep: float = _doc("the fraction of a rung's configurations retrained at the next rung (0 < keep < 1)",
                       default=1 / 3)


@dataclass(frozen=True)
class EarlyStop:
    grace_epochs: int = _doc("the first epoch at which trials are compared (then grace * eta, ...)", default=2)
    eta: float = _doc("a trial is stopped when more than 1/eta of its peers were more accurate (eta > 1)",
                      default=3.0)
    min_peers: int = _doc("trials no larger than it (by predicted size) needed before one is stopped", default=4)


@dataclass(frozen=True)
class Resources:
    cpu: float = _doc("CPUs each trial asks Ray for; torch runs this many threads", default=1.0)
    gpu: float = _doc("GPUs each trial asks Ray for (fractions share one: 0.25 packs four trials on a GPU); a "
                      "trial given one trains, fine-tunes and runs QAT on it (column device). A request no node has "
                      "(cpu or gpu) stops the sweep before it starts (exit 2)", default=0.0)


@dataclass(frozen=True)
class Spec:
    name: str = _doc("1-64 letters, digits, - or _ (required)")
    task: Task = _doc("the data, the model and the training budget (required)")
    objectives: tuple[Objective, ...] = _doc("metric: max | min for each objective (default: accuracy or r2 max, "
                                             "size_bytes min)")
    space: tuple[tuple[str, Param], ...] = _doc("the hyperparameters, each fixed or a distribution")
    constraints: tuple[Bound, ...] = _doc("metric: {min, max}; trials that break one never enter the front",
                                          default=())
    #: One section per declared compression method (spaces._methods), in declaration order.
    compress: tuple[Section, ...] = _doc("one section per compression method, applied prune -> declared methods "
                                         "-> quantize", default_factory=default_sections)
    search: Search = _doc("how the searcher runs", default_factory=Search)
    resources: Resources = _doc("what each trial asks Ray for", default_factory=Resources)
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

        from slimtune.spaces._parse import _parse_objectives

        return dataclasses.replace(self, objectives=_parse_objectives(None, kind))
