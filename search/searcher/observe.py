"""Observations given to the study besides the trials Ray runs: ladder rungs and warm starts.

A configuration becomes Optuna parameters by replaying the spec's define-by-run function
on an ``optuna.trial.FixedTrial``: the one conversion (``spaces.suggest``) stays the only
place where spec values meet Optuna distributions.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna

from slimtune.spaces import Spec


def as_params(spec: Spec, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(params, distributions)`` of ``config`` in ``spec``'s space, or None when a value
    is missing or outside its distribution."""
    values = {k: _plain(v) for k, v in config.items() if v is not None and not _nan(v)}
    trial = optuna.trial.FixedTrial(values)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.sample(trial)
    except (ValueError, KeyError, TypeError):
        return None
    dists = trial.distributions
    if not all(_within(dists[name], value) for name, value in trial.params.items()):
        return None
    return dict(trial.params), dict(dists)


def _within(d: optuna.distributions.BaseDistribution, value: Any) -> bool:
    """``value`` lies in ``d`` (read from its public fields: range and step, or choices)."""
    try:
        v = d.to_internal_repr(value)  # a categorical value that is not a choice raises
    except ValueError:
        return False
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return True
    if not d.low <= v <= d.high:
        return False
    step = getattr(d, "step", None)
    return step is None or abs((v - d.low) / step - round((v - d.low) / step)) < 1e-8


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def observation(spec: Spec, config: dict[str, Any], values: list[float], user_attrs: dict[str, Any],
                constraints: dict[str, float] | None = None) -> optuna.trial.FrozenTrial | None:
    pd_ = as_params(spec, config)
    if pd_ is None:
        return None
    params, dists = pd_
    return optuna.trial.create_trial(params=params, distributions=dists, values=values, user_attrs=user_attrs,
                                     constraints=constraints or None)


def warm_start(study: optuna.Study, spec: Spec, earlier: str | Path) -> tuple[int, int]:
    """Seed ``study`` from an earlier sweep: enqueue its front configurations (those valid
    in this space) and, when the task and the whole space are the same, add its finished
    trials as observations. Returns (enqueued, observed)."""
    from slimtune.search.results.pareto import pareto_front
    from slimtune.search.results.table import load_results, sweep_meta
    from slimtune.search.storage import Storage
    from slimtune.search.task.data import sweep_split_seed

    earlier = Storage.open(earlier, field="warm_start").uri  # a folder or a URI, credential-free
    meta = sweep_meta(earlier)
    df = load_results(earlier)
    front = pareto_front(df)
    enqueued = 0
    for _, row in front.iterrows():
        pd_ = as_params(spec, row.to_dict())
        if pd_ is not None:
            study.enqueue_trial(pd_[0], user_attrs={"warm_start_from": str(earlier)}, skip_if_exists=True)
            enqueued += 1
    old = meta.get("spec", {})
    new = dict(spec.source)
    # Same task means the same data split too: the earlier sweep's recorded split seed (older
    # sweeps: their search seed) against this spec's, the rest of the task as written.
    task = lambda s: {k: v for k, v in (s.get("task") or {}).items() if k != "split_seed"}  # noqa: E731
    same = (task(old) == task(new) and sweep_split_seed(meta) == spec.task.split_seed
            and all(old.get(k) == new.get(k) for k in ("space", "compress", "objectives")))
    observed = 0
    if same:
        for _, row in df[df["status"] == "ok"].iterrows():
            r = row.to_dict()
            t = observation(spec, r, [float(r[m]) for m in spec.metric_names],
                            {"warm_start_from": str(earlier), "observed_trial": str(r["trial_id"])},
                            {b.metric: b.violation(float(r[b.metric])) for b in spec.constraints})
            if t is not None:
                study.add_trial(t)
                observed += 1
    return enqueued, observed
