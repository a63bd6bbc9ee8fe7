"""The Pareto plot of a sweep (PNG, matplotlib's Agg canvas) and the hypervolume it uses.

Left panel: the task metric (accuracy, or r2 for regression) of every finished trial against
its artifact size (log x). Front members are coloured, joined by the front's step line and
labelled with their trial numbers; dominated trials are grey, trials that break a constraint
are grey crosses, failed trials are not drawn. Each front member's dense baseline (the same
model stored as dense fp32, ``dense_bytes``) is a hollow marker joined to it. Constraint lines
are drawn for constraints on the plotted axes.

Right panel: hypervolume of the front against trial number, measured on the axes the left
panel draws (metric, log10 size) with the reference point (metric 0, size = the largest
``dense_bytes`` of the sweep): the area, in metric × decades of size, that the front dominates.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from search.results.table import load_results, pareto_front, sweep_meta, write_atomic
from search.storage import Storage
from spaces import TASK_METRIC, SpecError

#: Size axis of the plot (and of the hypervolume it draws).
SIZE = "size_bytes"


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that can enter a front: finished and feasible (as :func:`pareto_front` filters)."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    if "feasible" in ok:
        ok = ok[ok["feasible"].fillna(False).astype(bool)]
    return ok


def _nondominated(costs: np.ndarray) -> np.ndarray:
    """The rows of ``costs`` (minimised) that no other row dominates (duplicates kept once)."""
    costs = np.unique(costs, axis=0)
    le = np.all(costs[:, None, :] <= costs[None, :, :], axis=2)  # le[j, i]: j <= i everywhere
    lt = np.any(costs[:, None, :] < costs[None, :, :], axis=2)
    dominated = np.any(le & lt, axis=0)
    return costs[~dominated]


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
            total += (upper - pts[i, 0]) * _hv(_nondominated(pts[: i + 1, 1:]), ref[1:])
    return total


def _costs(df: pd.DataFrame, objectives: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    signs = np.array([-1.0 if d == "max" else 1.0 for d in objectives.values()])
    vals = df[list(objectives)].to_numpy(dtype=float) * signs if len(df) else np.zeros((0, len(objectives)))
    return vals[np.all(np.isfinite(vals), axis=1)], signs


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
    for col, direction in objectives.items():
        if direction not in ("max", "min"):
            raise ValueError(f"objectives.{col}: direction must be max or min, but got {direction!r}")
        if col not in df.columns:
            raise ValueError(f"objectives: {col!r} must be a column of the frame, but got columns {list(df.columns)}")
    costs, signs = _costs(_finished(df), objectives)
    r = np.array([float(ref[c]) for c in objectives]) * signs
    costs = costs[np.all(costs < r, axis=1)]
    if not len(costs):
        return 0.0
    return _hv(_nondominated(costs), r)


def hypervolume_curve(df: pd.DataFrame, objectives: Mapping[str, str],
                      ref: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(trial numbers, hypervolume of the front of the trials up to each), all trials in order."""
    objectives = dict(objectives)
    order = df.sort_values("trial_number", kind="stable")
    r = np.array([float(ref[c]) for c in objectives]) * np.array([-1.0 if d == "max" else 1.0
                                                                   for d in objectives.values()])
    fin = set(_finished(order).index)
    front = np.zeros((0, len(objectives)))
    numbers, values, hv = [], [], 0.0
    for idx, row in order.iterrows():
        if idx in fin:
            cost, _ = _costs(order.loc[[idx]], objectives)
            if len(cost) and np.all(cost[0] < r):
                front = _nondominated(np.vstack([front, cost]))
                hv = _hv(front, r)
        numbers.append(int(row["trial_number"]))
        values.append(hv)
    return np.array(numbers), np.array(values)


def task_metric(meta: Mapping[str, Any]) -> str:
    return TASK_METRIC[meta.get("kind", "classification")]


def reference_point(df: pd.DataFrame, metric: str) -> dict[str, float]:
    """The plot's hypervolume reference: metric 0, size = the largest ``dense_bytes`` of a finished trial."""
    ok = df[df["status"] == "ok"] if len(df) else df
    dense = pd.to_numeric(ok["dense_bytes"], errors="coerce").astype("float64").max() if len(ok) else np.nan
    return {metric: 0.0, SIZE: float(dense) if np.isfinite(dense) else 0.0}


def render_png(df: pd.DataFrame, meta: Mapping[str, Any], *, dpi: int = 110) -> bytes:
    """The two-panel plot of ``df`` (from :func:`load_results`) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = task_metric(meta)
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax, hx = fig.subplots(1, 2, width_ratios=[3, 2])
    _pareto_panel(ax, df, meta, metric)
    _hypervolume_panel(hx, df, metric)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_sweep(path: str | Path, out: str | Path | None = None) -> Path | str:
    """Write the sweep's Pareto plot (default ``<path>/pareto.png``, also at a URI); return where."""
    meta = sweep_meta(path)
    df = load_results(path)
    st = Storage.open(path, "path")
    if out is None and st.local_path is None:  # a sweep at a URI: the plot goes beside it there
        st.write_atomic("pareto.png", render_png(df, meta))
        return st.uri_of("pareto.png")
    out = Path(out) if out is not None else Path(path) / "pareto.png"
    if out.is_dir():
        raise SpecError("--out", "must be a file path, not a folder", str(out), f"e.g. {out / 'pareto.png'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, render_png(df, meta))
    return out


# ------------------------------------------------------------------ panels


def _pareto_panel(ax, df: pd.DataFrame, meta: Mapping[str, Any], metric: str) -> None:
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    ok = df[df["status"] == "ok"] if len(df) else df
    ok = ok[np.isfinite(pd.to_numeric(ok[metric], errors="coerce").astype(float))
            & np.isfinite(pd.to_numeric(ok[SIZE], errors="coerce").astype(float))] if len(ok) else ok
    failed = int((df["status"] == "failed").sum()) if len(df) else 0
    ax.set_xlabel("artifact size in bytes (log scale)")
    ax.set_ylabel(f"validation {metric} of the compressed model")
    if not len(ok):
        ax.set_title(f"{meta.get('name', '')}: no finished trials yet ({failed} failed)")
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", va="center", transform=ax.transAxes)
        return
    feasible = ok["feasible"].fillna(False).astype(bool) if "feasible" in ok else pd.Series(True, index=ok.index)
    objectives = dict(meta.get("objectives") or {metric: "max", SIZE: "min"})
    front = pareto_front(ok, objectives) if set(objectives) <= set(ok.columns) else ok.iloc[:0]
    two_d = pareto_front(ok, {metric: "max", SIZE: "min"})
    rest = ok[feasible & ~ok.index.isin(front.index)]
    infeasible = ok[~feasible]
    ax.scatter(rest[SIZE], rest[metric], s=22, color="0.65", label=f"dominated ({len(rest)})", zorder=2)
    if len(infeasible):
        ax.scatter(infeasible[SIZE], infeasible[metric], s=26, marker="x", color="0.55",
                   label=f"breaks a constraint ({len(infeasible)})", zorder=2)
    steps = two_d.sort_values(SIZE, kind="stable")
    ax.step(steps[SIZE], steps[metric], where="post", color="C0", lw=1.4, zorder=3)
    ax.scatter(front[SIZE], front[metric], s=46, color="C0", edgecolor="black", lw=0.6,
               label=f"Pareto front ({len(front)})", zorder=4)
    for _, row in front.iterrows():
        ax.annotate(str(int(row["trial_number"])), (row[SIZE], row[metric]), textcoords="offset points",
                    xytext=(4, -11), fontsize=8, color="C0")
    dense = front[np.isfinite(pd.to_numeric(front["dense_bytes"], errors="coerce").astype(float))]
    if len(dense):
        for _, row in dense.iterrows():
            ax.plot([row[SIZE], row["dense_bytes"]], [row[metric], row[metric]], ls=":", lw=0.9, color="C1",
                    zorder=1)
        ax.scatter(dense["dense_bytes"], dense[metric], s=40, facecolors="none", edgecolors="C1", lw=1.2,
                   label="same model stored dense fp32 (dense_bytes)", zorder=3)
    notes = []
    for name, bound in (meta.get("constraints") or {}).items():
        for side, sym in (("max", "≤"), ("min", "≥")):
            v = bound.get(side) if isinstance(bound, Mapping) else None
            if v is None:
                continue
            label = f"constraint {name} {sym} {v:g}"
            if name == SIZE:
                ax.axvline(v, color="C3", ls="--", lw=1.1, label=label)
            elif name == metric:
                ax.axhline(v, color="C3", ls="--", lw=1.1, label=label)
            else:
                notes.append(label)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    title = (f"{meta.get('name', '')}: {len(ok)} finished, {failed} failed, front of {len(front)} "
             f"({' / '.join(f'{k} {d}' for k, d in objectives.items())})")
    ax.set_title(title, fontsize=10)
    if notes:
        ax.text(0.01, 0.01, "not on these axes: " + ", ".join(notes), transform=ax.transAxes, fontsize=8,
                va="bottom", color="C3")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)


def _hypervolume_panel(ax, df: pd.DataFrame, metric: str) -> None:
    ref = reference_point(df, metric)
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"hypervolume ({metric} × decades of size)")
    ax.set_title(f"hypervolume of the ({metric}, log10 size) front\nreference: {metric} 0, "
                 f"size = max dense_bytes = {ref[SIZE]:,.0f} B", fontsize=10)
    if not len(df) or ref[SIZE] <= 0:
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", va="center", transform=ax.transAxes)
        return
    logs = df.assign(log10_size=np.log10(pd.to_numeric(df[SIZE], errors="coerce").astype(float).clip(lower=1)))
    numbers, hv = hypervolume_curve(logs, {metric: "max", "log10_size": "min"},
                                    {metric: 0.0, "log10_size": float(np.log10(ref[SIZE]))})
    ax.step(numbers, hv, where="post", color="C2", lw=1.6)
    ax.scatter(numbers, hv, s=10, color="C2")
    ax.grid(True, alpha=0.25)
