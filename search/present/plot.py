"""The Pareto plot of a sweep (PNG, matplotlib's Agg canvas) with the hypervolume curve
(the front and hypervolume themselves: :mod:`search.results.pareto`).

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

from slimtune.search.results.pareto import hypervolume_curve, pareto_front
from slimtune.search.results.table import load_results, sweep_meta, write_atomic
from slimtune.search.storage import Storage
from slimtune.spaces import SpecError
from slimtune.spaces import task_metric as _task_metric

#: Size axis of the plot (and of the hypervolume it draws).
SIZE = "size_bytes"


def task_metric(meta: Mapping[str, Any]) -> str:
    return _task_metric(meta.get("kind"))


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
        raise SpecError("out", "must be a file path, not a folder", str(out), f"e.g. {out / 'pareto.png'}")
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
    _dense_links(ax, front, metric)
    notes = _constraint_lines(ax, meta, metric)
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


def _dense_links(ax, front: pd.DataFrame, metric: str) -> None:
    """Each front trial linked to the same model stored dense fp32 (``dense_bytes``)."""
    dense = front[np.isfinite(pd.to_numeric(front["dense_bytes"], errors="coerce").astype(float))]
    if not len(dense):
        return
    for _, row in dense.iterrows():
        ax.plot([row[SIZE], row["dense_bytes"]], [row[metric], row[metric]], ls=":", lw=0.9, color="C1",
                zorder=1)
    ax.scatter(dense["dense_bytes"], dense[metric], s=40, facecolors="none", edgecolors="C1", lw=1.2,
               label="same model stored dense fp32 (dense_bytes)", zorder=3)


def _constraint_lines(ax, meta: Mapping[str, Any], metric: str) -> list[str]:
    """A dashed line for each constraint on the panel's axes; the labels of the others."""
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
    return notes


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
