"""The ladder, aimed: which extra compression settings a trained model is evaluated at.

With ``search.ladder: n`` each trained trial also evaluates ``n`` more compression settings of
its trained model (rungs). The searcher proposes them in the driver when it hands the trial out
(``config["ladder_configs"]``); the worker only evaluates what it was given.

Aiming: a pool of candidate settings is drawn as the uniform ladder draws them (seeded by the
trial's seed), each candidate's artifact size is predicted before training
(:mod:`search.searcher.size_prediction`), and the rungs are picked to fill the largest gaps of
the current front's size axis (log bytes): the widest gap that holds a candidate (between two
front sizes, or below the front's smallest, down to the smallest candidate; the trial's own
predicted size counts as occupied) gets the candidate nearest its middle, which then splits it
(below the front: the smallest candidate, which extends the front furthest).
Candidates predicted to break a size constraint are never proposed. Without a front (the first
trials), without data to predict with, or when prediction fails (a warning), the uniform draw
is kept. Deterministic given the
trial's seed and the front; in reproducible mode the front only changes at batch boundaries.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
import pandas as pd

from slimtune.search.results.pareto import pareto_front
from slimtune.spaces import Spec

#: Candidates drawn per rung to aim among.
POOL = 8


def front_sizes(spec: Spec, study: optuna.Study) -> list[float]:
    """``size_bytes`` of the front of the finished rows the study holds (trials and rungs)."""
    rows = [t.user_attrs["row"] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("trained", True) and isinstance(t.user_attrs.get("row"), dict)]
    objectives = dict(zip(spec.metric_names, spec.modes))
    objectives.setdefault("size_bytes", "min")
    df = pd.DataFrame(rows)
    if df.empty or any(c not in df for c in objectives):
        return []
    return sorted(float(s) for s in pareto_front(df, objectives)["size_bytes"])


def aim(sizes: list[float], own: float | None, candidates: list[float], n: int) -> list[int]:
    """Indices of up to ``n`` of ``candidates`` (predicted sizes) placed in the largest gaps of
    the front's sizes ``sizes`` (``own``: the trial's own size, also occupied). Empty without a front."""
    if not sizes or not candidates:
        return []
    logs = [math.log(max(c, 1.0)) for c in candidates]
    occupied = sorted({math.log(max(s, 1.0)) for s in sizes} | ({math.log(max(own, 1.0))} if own else set()))
    top = math.log(max(max(sizes), 1.0))
    occupied = [o for o in occupied if o <= top]
    chosen: list[int] = []
    for _ in range(n):
        bounds = [min(logs), *occupied] if min(logs) < occupied[0] else occupied
        best = None  # (width, index)
        for lo, hi in zip(bounds, bounds[1:]):
            below = lo < occupied[0]  # below the front: the smallest candidate extends it furthest
            inside = [i for i, x in enumerate(logs) if (lo <= x if below else lo < x) and x < hi and i not in chosen]
            if not inside:
                continue
            mid = lo if below else (lo + hi) / 2
            pick = min(inside, key=lambda i: (abs(logs[i] - mid), i))
            if best is None or hi - lo > best[0]:
                best = (hi - lo, pick)
        if best is None:
            break
        chosen.append(best[1])
        occupied = sorted([*occupied, logs[best[1]]])
    return chosen


def propose(spec: Spec, data: Any, study: optuna.Study, config: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The ``n`` rung configurations for ``config``: aimed at the front's gaps, topped up with
    (then, without a front, made of) the uniform draws."""
    from slimtune.search.searcher.size_prediction import predict, surely_infeasible
    from slimtune.search.trial import ladder_configs

    pool = ladder_configs(spec, config, POOL * n)
    sizes = front_sizes(spec, study) if data is not None else []
    if not sizes:
        return pool[:n]
    try:
        predicted = [predict(spec, data, c) for c in pool]
    except Exception as exc:  # a model hook that cannot be built untrained here: the trial still runs
        warnings.warn(f"ladder: size prediction failed ({type(exc).__name__}: {exc}); rungs drawn uniformly",
                      stacklevel=2)
        return pool[:n]
    feasible = [i for i, p in enumerate(predicted) if not surely_infeasible(spec, p)]
    own = config.get("predicted_size_bytes")
    own = float(own) if own is not None else predict(spec, data, config)["size_bytes"]
    picked = [feasible[i] for i in aim(sizes, own, [predicted[i]["size_bytes"] for i in feasible], n)]
    picked += [i for i in feasible if i not in picked][: n - len(picked)]
    return [{**pool[i], "predicted_size_bytes": int(predicted[i]["size_bytes"])} for i in picked]
