"""One self-contained HTML report of a sweep: inline CSS, the plot as a base64 PNG, no script.

Sections: summary, the Pareto plot, the front, parameter importances per objective (Optuna's
fANOVA on ``study.db``), failed trials with their errors, every trial, and the spec.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from slimtune.search.present.plot import render_png, task_metric
from slimtune.search.results.pareto import pareto_front
from slimtune.search.results.table import STUDY, load_results, sweep_meta, was_trained, write_atomic
from slimtune.search.storage import Storage
from slimtune.spaces import SpecError, shown_columns

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1400px;
     padding:0 1em;color:#1d1d1f;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.muted{color:#666} code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:.8em;overflow:auto;border-radius:4px}
table{border-collapse:collapse;font-size:12px;margin:.5em 0} th,td{padding:3px 8px;text-align:right;
     border-bottom:1px solid #eee;white-space:nowrap} th{background:#f6f8fa;position:sticky;top:0}
td.err{text-align:left;white-space:pre-wrap;max-width:70em}
.wrap{overflow-x:auto;max-height:40em} img.plot{max-width:100%;height:auto;border:1px solid #eee}
.bar{display:inline-block;height:10px;background:#1f77b4;vertical-align:middle}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:8em}
.card b{display:block;font-size:1.4em}
"""


def table_columns() -> list[str]:
    """Columns of the front and trials tables, in order (those present and not all empty): the
    metrics the report shows (``spaces.METRIC_TABLE``), then ``feasible``."""
    return ["trial_number", "trial_id", "status", *shown_columns("report"), "feasible"]


def _table(df: pd.DataFrame, cols: list[str], table_id: str) -> str:
    cols = [c for c in cols if c in df.columns and df[c].notna().any()]
    if not len(df):
        return f'<p id="{table_id}" class="muted">(none)</p>'
    body = df[cols].to_html(index=False, border=0, table_id=table_id, na_rep="", escape=True,
                            float_format=lambda v: f"{v:.4g}")
    return f'<div class="wrap">{body}</div>'


def param_importances(path: str | Path) -> dict[str, dict[str, float] | str]:
    """Per objective: ``{param: importance}`` (Optuna's fANOVA, seeded), or why there is none."""
    import warnings

    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    st = Storage.open(path, "path")
    meta = sweep_meta(st)
    objectives = list(meta["objectives"])
    if not st.is_file(STUDY):
        return {o: f"no {STUDY} in the sweep folder" for o in objectives}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="slimtune-report-") as tmp:
        db = st.local_path / STUDY if st.local_path is not None else Path(tmp) / STUDY
        if st.local_path is None:  # the study's snapshot at a URI, read from a local copy
            db.write_bytes(st.read_bytes(STUDY))
        try:
            study = optuna.load_study(study_name=meta["name"], storage=f"sqlite:///{db.resolve()}")
            directions = study.directions
            complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if was_trained(t)]
        except Exception as exc:  # a missing or foreign study is not the report's failure
            return {o: f"could not open the study: {type(exc).__name__}: {exc}" for o in objectives}
    if len(complete) < 2:
        return {o: f"needs at least 2 complete trials, but the study has {len(complete)} trained" for o in objectives}
    # the trained trials only: a configuration skipped as infeasible is no evidence
    study = optuna.create_study(directions=directions)
    study.add_trials(complete)
    out: dict[str, dict[str, float] | str] = {}
    for i, name in enumerate(objectives):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                            target=lambda t, i=i: t.values[i])
            out[name] = {k: float(v) for k, v in imp.items()} or "no parameter was sampled in every trial"
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def _importance_html(imps: Mapping[str, Mapping[str, float] | str]) -> str:
    parts = []
    for name, imp in imps.items():
        parts.append(f"<h3>{html.escape(name)}</h3>")
        if isinstance(imp, str):
            parts.append(f'<p class="muted">not available: {html.escape(imp)}</p>')
            continue
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(k)}</td><td>{v:.3f}</td>"
            f"<td style='text-align:left'><span class='bar' style='width:{max(1, round(300 * v))}px'></span></td></tr>"
            for k, v in imp.items())
        parts.append(f"<table class='importance'><tr><th>parameter</th><th>importance</th><th></th></tr>{rows}</table>")
    return "\n".join(parts)


def _card(label: str, value: Any) -> str:
    return f'<div class="card"><span class="muted">{html.escape(label)}</span><b>{html.escape(str(value))}</b></div>'


def render_report(path: str | Path) -> str:
    """The HTML text of the report of the sweep at ``path``."""
    import yaml

    meta = sweep_meta(path)
    df = load_results(path)
    metric = task_metric(meta)
    front = pareto_front(df) if len(df) else df
    failed = df[df["status"] == "failed"] if len(df) else df
    params = [p for p in meta["params"] if p in df.columns]
    png = base64.b64encode(render_png(df, meta)).decode("ascii")
    best = pd.to_numeric(front[metric], errors="coerce").max() if len(front) else math.nan
    name = html.escape(meta["name"])
    objectives = ", ".join(f"{k} ({d})" for k, d in meta["objectives"].items())
    constraints = _constraints_text(meta)
    spec_yaml = yaml.safe_dump(meta.get("spec", {}), sort_keys=False)
    folder = str(path)
    failed_html = _failed_html(failed)
    example = (f"slimtune export {folder} --trial {int(front.iloc[0]['trial_number'])} --format onnx --out model.onnx"
               if len(front) else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>slimtune report: {name}</title><style>{CSS}</style></head>
<body>
<h1>slimtune report: {name}</h1>
<p class="muted">sweep folder <code>{html.escape(folder)}</code> · created {html.escape(str(meta.get('created', '')))}
 · objectives {html.escape(objectives)} · constraints {html.escape(constraints)}</p>
<div class="cards">{_card('trials', len(df))}{_card('finished', int((df['status'] == 'ok').sum()) if len(df) else 0)}
{_card('failed', len(failed))}{_card('on the front', len(front))}
{_card('best ' + metric + ' on the front', f'{best:.4g}' if math.isfinite(best) else '–')}</div>

<h2>Pareto plot</h2>
<img class="plot" id="pareto-plot" alt="{metric} against artifact size, with the Pareto front; hypervolume by trial"
 src="data:image/png;base64,{png}">

<h2>Pareto front</h2>
<p>Non-dominated, feasible, finished trials, best {html.escape(next(iter(meta['objectives']), ''))} first.
{f'Export one: <code>{html.escape(example)}</code>' if example else ''}</p>
{_table(front, table_columns() + params, "front")}

<h2>Parameter importances</h2>
<p class="muted">Optuna's fANOVA (seed 0) on <code>{STUDY}</code>, per objective, over the parameters sampled in
every complete trial.</p>
{_importance_html(param_importances(path))}

<h2>Failed trials</h2>
{failed_html}

<h2>All trials</h2>
{_table(df, table_columns() + params, "trials")}

<h2>Spec</h2>
<pre id="spec">{html.escape(spec_yaml)}</pre>

<p class="muted">Written by slimtune {_version()} on {time.strftime("%Y-%m-%d %H:%M:%S")}.</p>
</body></html>
"""


def _constraints_text(meta: dict) -> str:
    """``size_bytes ≤ 5000, accuracy ≥ 0.9``, or ``none``."""
    return ", ".join(
        f"{k} {'≥ ' + format(b['min'], 'g') if b.get('min') is not None else ''}"
        f"{' and ' if b.get('min') is not None and b.get('max') is not None else ''}"
        f"{'≤ ' + format(b['max'], 'g') if b.get('max') is not None else ''}"
        for k, b in (meta.get("constraints") or {}).items()) or "none"


def _failed_html(failed: pd.DataFrame) -> str:
    """The table of failed trials and their errors."""
    failed_rows = "".join(
        f"<tr><td>{int(r['trial_number']) if pd.notna(r['trial_number']) else ''}</td>"
        f"<td>{html.escape(str(r['trial_id']))}</td>"
        f"<td class='err'>{html.escape(str(r['error']))}</td></tr>" for _, r in failed.iterrows())
    return (f"<table id='failed'><tr><th>trial</th><th>trial_id</th><th style='text-align:left'>error</th></tr>"
            f"{failed_rows}</table>" if len(failed) else '<p id="failed" class="muted">(no failed trials)</p>')


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("slimtune")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def write_report(path: str | Path, out: str | Path | None = None) -> Path | str:
    """Write the report of the sweep at ``path`` (default ``<path>/report.html``, also at a URI); return where."""
    sweep_meta(path)  # a clear error before anything is written
    st = Storage.open(path, "path")
    if out is None and st.local_path is None:  # a sweep at a URI: the report goes beside it there
        st.write_atomic("report.html", render_report(path).encode("utf-8"))
        return st.uri_of("report.html")
    out = Path(out) if out is not None else Path(path) / "report.html"
    if out.is_dir():
        raise SpecError("out", "must be a file path, not a folder", str(out), f"e.g. {out / 'report.html'}")
    text = render_report(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text.encode("utf-8"))
    return out
