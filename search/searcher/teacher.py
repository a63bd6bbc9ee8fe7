"""The teacher of a distilling sweep (``compress.distill``): chosen in the driver, when a trial is handed out.

Each trained trial of a distilling sweep stores its dense model before compression
(``teachers/<trial number>.slim``, :func:`search.trial.offer_teacher`) and reports its validation
metric as ``dense_<metric>``. A trial handed out later distils from the best of those the study
has been told of (ties: the lowest trial number): new configurations and promotions count; ladder
rungs (which share their parent's dense model), warm-start observations from another sweep and
trials that failed or stopped early do not. In reproducible mode the study is told only at batch
boundaries, in trial-number order, so the choice is the same however trials' timings fall.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from slimtune.spaces import Fixed, Spec


def distils(spec: Spec) -> bool:
    """Whether ``spec`` distils: ``compress.distill.weight`` is written and not fixed at 0."""
    section = next((s for s in spec.compress if s.declared.name == "distill"), None)
    weight = section.weight if section is not None else None
    return weight is not None and not (isinstance(weight, Fixed) and weight.value == 0)


def best_teacher(study: optuna.Study, metric: str) -> tuple[str | None, int | None]:
    """``(teacher artifact, its trial number)``: the completed trial of this sweep whose dense
    model has the best ``dense_<metric>`` (all task metrics are maximised); ``(None, None)`` when
    none has been told yet."""
    best: tuple[float, int, str] | None = None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        row: Any = t.user_attrs.get("row")
        if t.user_attrs.get("ray_trial_id") is None or not isinstance(row, dict) or not row.get("dense_artifact"):
            continue  # a rung, an observation from another sweep, or a trial that stored no dense model
        value = row.get(f"dense_{metric}")
        if value is None or not math.isfinite(float(value)):
            continue
        if best is None or float(value) > best[0]:
            best = (float(value), t.number, str(row["dense_artifact"]))
    return (None, None) if best is None else (best[2], best[1])
