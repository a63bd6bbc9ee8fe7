"""The searcher: Ray Tune asks it what to try next; an Optuna study proposes and records.

:class:`SlimSearcher` is a ``ray.tune.search.Searcher`` driven only through Optuna's public
ask-and-tell interface (``study.ask``/``tell``/``add_trial``, ``Trial.set_constraint``,
``Trial.set_user_attr``). Its own state is the map from Ray trial ids to the Optuna trials it
asked. On top of plain ask-and-tell it:

* predicts each configuration's size before training; one that surely breaks a size
  constraint is never trained, and the study records it as untrained (:func:`tell_untrained`);
* tells outcomes: ok -> COMPLETE with constraint values, stopped early -> PRUNED, failed ->
  FAIL; each trial carries its results ``row``, its ``config`` and its ``ray_trial_id``;
* in a distilling sweep (``compress.distill``), names each trial's teacher
  (``config["teacher"]``, ``teacher_trial``: :mod:`search.searcher.teacher`);
* proposes each trial's ladder rungs when handing it out (``config["ladder_configs"]``, aimed
  at the front's gaps: :mod:`search.searcher.ladder`) and adds each rung (another compression
  of a trained model) as a COMPLETE trial with its ``parent``;
* in reproducible mode (``search.reproducible``), asks configurations in batches of
  :data:`REPRODUCIBLE_BATCH` (or ``concurrency`` when larger) and tells a batch only once all
  of it has ended, in trial-number order, so
  the study, ladder numbering and early-stopping peers do not depend on which trial ended first;
* with ``search.promote``, retrains the configurations that are best for their size at the next
  epoch budget (:mod:`search.searcher.promote`): each promotion is enqueued in the study with
  the parent's parameters and user attributes ``parent`` and ``budget``, asked like any queued
  trial, and runs as a new Ray trial (seeded as its parent). ``trials`` counts new
  configurations only; promotions come on top. Reproducible mode promotes at batch boundaries.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from ray.tune.search import Searcher

from slimtune.search.results.record import Record
from slimtune.search.results.rows import DefineByRun, jsonable, make_row, outcome, param_names
from slimtune.search.searcher.teacher import best_teacher, distils
from slimtune.search.task.data import Data
from slimtune.spaces import Spec, SpecError, task_metric, worst_value

#: Samplers that learn from an infeasible PRUNED trial carrying its constraint values (TPE
#: puts it with the infeasible trials; random learns nothing). NSGA-II and GP read only
#: COMPLETE trials: they are told an untrained configuration as a marked COMPLETE trial.
LEARN_FROM_PRUNED = ("tpe", "random")

#: Consecutive configurations predicted infeasible after which the sweep gives up.
MAX_SKIPS = 200


def told_values(spec: Spec, predicted: dict[str, float]) -> list[float]:
    """Objective values told for an untrained configuration (NSGA-II, GP): the prediction
    where there is one, else the worst plausible value. The trial is marked ``trained: false``."""
    return [float(predicted[name]) if name in predicted else worst_value(name, mode)
            for name, mode in zip(spec.metric_names, spec.modes)]


def tell_untrained(study: optuna.Study, spec: Spec, trial: optuna.Trial, predicted: dict[str, float]) -> None:
    """Tell ``study`` that ``trial``'s configuration was predicted infeasible and never trained.

    Its constraint values are the predicted ones. For samplers that learn from an infeasible
    PRUNED trial it is PRUNED; for those that read only COMPLETE trials it is COMPLETE with
    ``trained: false`` and the predicted values (every reader of slimtune leaves it out)."""
    for b in spec.constraints:
        if b.metric in predicted:
            trial.set_constraint(b.metric, b.violation(float(predicted[b.metric])))
    trial.set_user_attr("trained", False)
    trial.set_user_attr("predicted", {k: float(v) for k, v in predicted.items()})
    if spec.search.sampler in LEARN_FROM_PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, told_values(spec, predicted))


#: Configurations asked per batch in reproducible mode (more when ``concurrency`` is larger):
#: rows are identical at any concurrency up to this number.
REPRODUCIBLE_BATCH = 4

class SlimSearcher(Searcher):
    """A Ray Tune searcher over ``study`` for ``trials`` more trainings of ``spec``.

    ``record`` (the sweep's :class:`~search.results.record.Record`; None: a record of its own)
    receives the results rows the searcher makes itself (skipped configurations, ladder rungs).
    With ``search.early_stop`` the searcher owns the early-stopping ``rule`` (the driver's
    scheduler applies it), whose observations reproducible mode commits at batch boundaries."""

    def __init__(self, spec: Spec, study: optuna.Study, data: Data | None, trials: int,
                 record: Record | None = None) -> None:
        super().__init__(metric=spec.metric_names, mode=spec.modes)
        from slimtune.search.searcher.early_stop import rule_for
        from slimtune.search.searcher.size_prediction import needs_prediction

        self.spec, self.study, self.data, self.budget = spec, study, data, trials
        self.record = record if record is not None else Record(param_names(spec))
        self.rule = rule_for(spec, data.kind) if spec.search.early_stop is not None and data is not None else None
        self.space = DefineByRun(spec)
        self.distilling, self.quality = distils(spec), task_metric(data.kind if data is not None else None)
        self.predicting = needs_prediction(spec) or spec.search.early_stop is not None
        self.live: dict[str, optuna.Trial] = {}  # Ray trial id -> the Optuna trial asked for it
        self.started = 0
        self.reproducible = spec.search.reproducible
        self.batch: list[str] = []  # reproducible mode: the Ray trial ids of the current batch
        self.batch_size = 0
        self.ended: dict[str, tuple[dict | None, bool]] = {}  # ended in this batch, not yet told
        self.promotion, self.pending = None, 0  # search.promote: the rule, promotions enqueued and not yet asked
        if spec.search.promote is not None:
            from slimtune.search.searcher.promote import Promotion

            self.promotion, self.pending = Promotion.from_study(spec, study)
            self._promote()  # earned before a driver was killed (a boundary: nothing runs yet)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True  # the space, metrics and modes are the spec's

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.started >= self.budget and not self.pending:
            if self.promotion is not None and self.live:
                return None  # a running trial may still earn a promotion
            return Searcher.FINISHED
        if self.reproducible:
            if not self.batch:
                # A batch size that does not follow concurrency: the same batches (and so the same
                # rows) at concurrency 1 as at 2..REPRODUCIBLE_BATCH.
                batch = max(REPRODUCIBLE_BATCH, self.spec.search.concurrency)
                self.batch_size = min(batch, self.budget - self.started + self.pending)
            elif len(self.batch) >= self.batch_size:
                return None  # the batch is full: wait until all of it has ended
        trial, cfg = self._ask()
        if self.spec.search.ladder:  # the rungs, aimed at the front's gaps (search.searcher.ladder)
            from slimtune.search.searcher.ladder import propose

            cfg["ladder_configs"] = propose(self.spec, self.data, self.study, cfg, self.spec.search.ladder)
        if self.distilling:  # the best dense model told so far (search.searcher.teacher); rungs share it
            chosen = dict(zip(("teacher", "teacher_trial"), best_teacher(self.study, self.quality)))
            cfg.update(chosen)
            for rung in cfg.get("ladder_configs") or []:
                rung.update(chosen)
        trial.set_user_attr("config", cfg)
        trial.set_user_attr("ray_trial_id", trial_id)
        self.live[trial_id] = trial
        if cfg.get("parent") is None:
            self.started += 1  # a promotion is not a new configuration
        if self.reproducible:
            self.batch.append(trial_id)
        return cfg

    def _ask(self) -> tuple[optuna.Trial, dict[str, Any]]:
        """The next configuration predicted feasible; those predicted infeasible are told as untrained."""
        from slimtune.search.searcher.size_prediction import predict, surely_infeasible

        for _ in range(MAX_SKIPS):
            trial = self.study.ask()
            if self.promotion is not None and trial.user_attrs.get("parent") is not None:
                return trial, self._promoted(trial)
            cfg = self.space(trial)
            if self.promotion is not None:
                cfg["budget"] = cfg["epochs"]  # the first rung
                trial.set_user_attr("budget", cfg["budget"])
            if not self.predicting:
                return trial, cfg
            predicted = predict(self.spec, self.data, cfg)
            cfg["predicted_size_bytes"] = int(predicted["size_bytes"])
            if not (self.spec.search.reject_infeasible and surely_infeasible(self.spec, predicted)):
                return trial, cfg
            self._skip(trial, cfg, predicted)
        raise SpecError("constraints", "must leave some configurations feasible",
                        f"{MAX_SKIPS} configurations in a row predicted infeasible",
                        "relax the constraints or the space")

    def _promoted(self, trial: optuna.Trial) -> dict[str, Any]:
        """The configuration of a promotion popped from the study's queue: the parent's
        parameters (replayed, so this trial records them) and seed, at the new budget."""
        parent, budget = int(trial.user_attrs["parent"]), int(trial.user_attrs["budget"])
        before = self.study.get_trials(deepcopy=False)[parent].user_attrs.get("config") or {}
        cfg = self.space(trial)
        cfg.update(epochs=budget, budget=budget, parent=parent)
        for key in ("seed", "predicted_size_bytes"):
            if key in before:
                cfg[key] = before[key]
        self.pending = max(0, self.pending - 1)
        return cfg

    def _promote(self) -> None:
        """Enqueue the promotions earned so far, in the rule's fixed order."""
        if self.promotion is None:
            return
        trials = self.study.get_trials(deepcopy=False)
        for parent, budget in self.promotion.due():
            self.study.enqueue_trial(trials[parent].params, user_attrs={"parent": parent, "budget": budget},
                                     skip_if_exists=False)
            self.pending += 1

    def _skip(self, trial: optuna.Trial, cfg: dict[str, Any], predicted: dict[str, float]) -> None:
        broken = ", ".join(f"{b.metric}={predicted[b.metric]:.6g} (min={b.min}, max={b.max})"
                           for b in self.spec.constraints if b.metric in predicted)
        row = make_row(self.spec, f"skip-{trial.number}", cfg, None,
                       ("infeasible", f"predicted before training: {broken}"))
        trial.set_user_attr("config", cfg)
        trial.set_user_attr("row", jsonable(row))
        tell_untrained(self.study, self.spec, trial, predicted)
        self.record.add(row)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live or trial_id in self.ended:
            return
        if not self.reproducible:
            self._tell(trial_id, result, error)
            return
        self.ended[trial_id] = (result, error)
        if len(self.ended) < len(self.batch) or len(self.batch) < self.batch_size:
            return
        order = sorted(self.batch, key=lambda tid: self.live[tid].number)
        for tid in order:  # the batch boundary: tell in trial-number order
            self._tell(tid, *self.ended[tid])
        if self.rule is not None:
            self.rule.commit(order)
        self._promote()
        self.batch, self.ended = [], {}

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        trial = self.live.pop(trial_id)
        spec = self.spec
        config = trial.user_attrs.get("config") or (result or {}).get("config") or {}
        status, err = outcome(spec, None if error else result)
        row = jsonable(make_row(spec, trial_id, config, result, (status, err)))
        trial.set_user_attr("row", row)
        if status == "stopped":
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif status == "failed":
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            assert result is not None
            for b in spec.constraints:
                trial.set_constraint(b.metric, b.violation(float(result[b.metric])))
            self.study.tell(trial, [float(result[m]) for m in spec.metric_names])
            if result.get("ladder"):
                self._add_rungs(trial_id, trial.number, result["ladder"])
        if self.promotion is not None and config.get("budget") is not None:
            self.promotion.record(trial.number, int(config["budget"]), row)
            if not self.reproducible:
                self._promote()

    def _add_rungs(self, parent_id: str, parent: int, rungs: list[dict[str, Any]]) -> None:
        """Each rung (a compression setting of the parent's trained model) becomes a COMPLETE
        trial of the study and a row linked to its parent."""
        from slimtune.search.searcher.observe import observation

        spec = self.spec
        for k, rung in enumerate(rungs):
            cfg = dict(rung["config"])
            if outcome(spec, {**rung, "phase": "final"})[0] != "ok":
                continue
            values = [float(rung[m]) for m in spec.metric_names]
            cfg["trial_number"] = len(self.study.get_trials(deepcopy=False))  # only this driver writes the study
            row = {**make_row(spec, f"{parent_id}-r{k}", cfg, rung, ("ok", None)), "parent": parent}
            t = observation(spec, cfg, values, {"config": cfg, "parent": parent, "row": jsonable(row)},
                            {b.metric: b.violation(float(rung[b.metric])) for b in spec.constraints})
            if t is None:
                continue
            self.study.add_trial(t)
            self.record.add(row)

    def save(self, checkpoint_path: str) -> None:
        """Ray's periodic checkpoint: the trial map, for the record. The study is the sweep's
        state; a sweep resumes from it (``slimtune resume``), not from Ray's checkpoint."""
        with open(checkpoint_path, "w") as f:
            json.dump({tid: t.number for tid, t in self.live.items()}, f)
