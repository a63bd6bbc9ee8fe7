"""The Pareto front and its hypervolume: the one place dominance is defined.

Used by the results table, progress, the searcher's observations, the plot, the report and the
benchmarks. Rows enter a front when finished (``status == "ok"``) and feasible.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that can enter a front: finished and feasible."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    if "feasible" in ok:
        ok = ok[ok["feasible"].fillna(False).astype(bool)]
    return ok


def dominated(costs: np.ndarray) -> np.ndarray:
    """Mask of the rows of ``costs`` (minimised) that another row dominates (no worse in
    every coordinate, better in one). Equal rows do not dominate each other."""
    if not len(costs):
        return np.zeros(0, dtype=bool)
    le = np.all(costs[:, None, :] <= costs[None, :, :], axis=2)  # le[j, i]: j <= i everywhere
    lt = np.any(costs[:, None, :] < costs[None, :, :], axis=2)
    return np.any(le & lt, axis=0)


def nondominated(costs: np.ndarray) -> np.ndarray:
    """The rows of ``costs`` (minimised) that no other row dominates (duplicates kept once)."""
    costs = np.unique(costs, axis=0)
    return costs[~dominated(costs)]


def _check(df: pd.DataFrame, objectives: Mapping[str, str]) -> None:
    for col, direction in objectives.items():
        if col not in df.columns:
            raise ValueError(f"objectives: {col!r} must be a column of the frame, but got columns {list(df.columns)}")
        if direction not in ("max", "min"):
            raise ValueError(f"objectives.{col}: direction must be max or min, but got {direction!r}")


def _signs(objectives: Mapping[str, str]) -> np.ndarray:
    return np.array([-1.0 if d == "max" else 1.0 for d in objectives.values()])


def _costs(df: pd.DataFrame, objectives: Mapping[str, str]) -> np.ndarray:
    """Each row's objectives as costs to minimise (NaN where a value is missing)."""
    if not len(df):
        return np.zeros((0, len(objectives)))
    return df[list(objectives)].to_numpy(dtype=float, na_value=np.nan) * _signs(objectives)


def pareto_front(df: pd.DataFrame, objectives: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The non-dominated, feasible, finished rows of ``df``.

    ``objectives`` maps column → ``"max"``/``"min"``; by default the sweep's own
    (``df.attrs["objectives"]``, set by :func:`search.load_results`). Sorted by the first
    objective, best first.
    """
    objectives = dict(objectives or df.attrs.get("objectives") or {})
    if not objectives:
        raise ValueError("pareto_front needs objectives: pass objectives={'accuracy': 'max', ...} "
                         "or a frame from load_results()")
    _check(df, objectives)
    ok = finished(df)
    costs = _costs(ok, objectives)
    finite = np.all(np.isfinite(costs), axis=1)
    keep = np.flatnonzero(finite)
    front = ok.iloc[keep[~dominated(costs[keep])]]
    first, d = next(iter(objectives.items()))
    front = front.sort_values(first, ascending=(d == "min"), kind="stable")
    front.attrs = dict(df.attrs)
    return front


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by ``points`` (minimised, all strictly below ``ref``) up to ``ref``.

    Slices along the first coordinate: between consecutive points the dominated region in the
    remaining coordinates is that of the points already passed.
    """
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    pts = points[np.argsort(points[:, 0], kind="stable")]
    total = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        if upper > pts[i, 0]:
            total += (upper - pts[i, 0]) * _hv(nondominated(pts[: i + 1, 1:]), ref[1:])
    return total


def hypervolume(df: pd.DataFrame, objectives: Mapping[str, str], ref: Mapping[str, float]) -> float:
    """Hypervolume of the feasible finished rows of ``df`` with respect to the point ``ref``.

    ``objectives`` maps column → ``"max"``/``"min"`` (as for :func:`pareto_front`); ``ref``
    maps the same columns to the reference value: the worst value still counted (e.g.
    ``{"accuracy": 0.0, "size_bytes": largest dense_bytes}``). It is the volume of the region
    that some row is at least as good as and that is better than ``ref`` in every objective;
    rows no better than ``ref`` in some objective add nothing. Units: the product of the
    objectives' units (accuracy × bytes for the default objectives).
    """
    objectives = dict(objectives)
    if set(ref) != set(objectives):
        raise ValueError(f"ref must give a value for each objective {list(objectives)}, but got {dict(ref)}")
    _check(df, objectives)
    costs = _costs(finished(df), objectives)
    r = np.array([float(ref[c]) for c in objectives]) * _signs(objectives)
    costs = costs[np.all(np.isfinite(costs), axis=1)]
    costs = costs[np.all(costs < r, axis=1)]
    if not len(costs):
        return 0.0
    return _hv(nondominated(costs), r)


def hypervolume_curve(df: pd.DataFrame, objectives: Mapping[str, str],
                      ref: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(trial numbers, hypervolume of the front of the trials up to each), all trials in order."""
    objectives = dict(objectives)
    order = df.sort_values("trial_number", kind="stable")
    r = np.array([float(ref[c]) for c in objectives]) * _signs(objectives)
    fin = set(finished(order).index)
    front = np.zeros((0, len(objectives)))
    numbers, values, hv = [], [], 0.0
    for idx, row in order.iterrows():
        if idx in fin:
            cost = _costs(order.loc[[idx]], objectives)
            if np.all(np.isfinite(cost)) and np.all(cost[0] < r):
                front = nondominated(np.vstack([front, cost]))
                hv = _hv(front, r)
        numbers.append(int(row["trial_number"]))
        values.append(hv)
    return np.array(numbers), np.array(values)
