"""The results table: one DataFrame, one row per trial, written as ``results.parquet``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from slimtune.search.storage import Storage, write_local_atomic
from slimtune.spaces import METHODS, SpecError, result_columns, whole_columns

RESULTS = "results.parquet"
SWEEP = "sweep.json"
STUDY = "study.db"

#: Columns of a row besides the parameters and the metrics (``spaces.result_columns``).
ROW_COLUMNS = ["feasible", "node", "device", "error", "artifact", "parent", "layer_bits", "teacher", "teacher_trial",
               "dense_artifact"]


def metric_columns() -> list[str]:
    """Columns always present, in this order, after ``trial_id``/``status`` and the parameters:
    the declared metrics (``spaces.METRIC_TABLE``), then :data:`ROW_COLUMNS`."""
    return [*result_columns(), *ROW_COLUMNS]


def int_columns() -> list[str]:
    """Columns of whole numbers: nullable integers (``Int64``) in :func:`load_results`, so that a
    missing value (a failed or stopped trial) does not turn the column into floats."""
    return ["trial_number", "seed", "parent", "predicted_size_bytes", *whole_columns(), "epochs", "batch_size",
            "depth", "width", *(k.col for m in METHODS.values() for k in m.keys if k.kind == "int"), "budget",
            "teacher_trial"]


def integer_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with :func:`int_columns` as ``Int64`` where every value present is a whole number."""
    for col in int_columns():
        if col not in df or isinstance(df[col].dtype, pd.Int64Dtype):
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        present = values.dropna()
        if df[col].notna().sum() == len(present) and bool((present == present.round()).all()):
            df[col] = values.astype("Int64")
    return df


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    write_local_atomic(Path(path), data)


def write_results(out: str | Path | Storage, rows: Iterable[Mapping[str, Any]], param_names: list[str]) -> pd.DataFrame:
    """Write ``results.parquet`` (atomically) into the sweep folder or URI ``out``."""
    df = frame(rows, param_names)
    Storage.open(out).write_atomic(RESULTS, df.to_parquet(index=False))
    return df


def _columns(param_names: list[str], present: Iterable[str]) -> list[str]:
    cols = ["trial_id", "trial_number", "status", *param_names, "seed", *metric_columns()]
    return cols + sorted(set(present) - set(cols))


def _read_table(st: Storage, meta: dict[str, Any]) -> pd.DataFrame:
    """``results.parquet`` in today's schema, also for sweeps written before a column existed
    (e.g. a compression key declared since): the same columns in the same order, empty where the
    sweep has no value."""
    params = [*meta["params"], *(c for m in METHODS.values() for c in m.columns if c not in meta["params"])]
    if not st.is_file(RESULTS):
        return frame([], params)
    df = pd.read_parquet(io.BytesIO(st.read_bytes(RESULTS)))
    return df.reindex(columns=_columns(params, df.columns))


def frame(rows: Iterable[Mapping[str, Any]], param_names: list[str]) -> pd.DataFrame:
    rows = list(rows)
    df = pd.DataFrame(rows, columns=_columns(param_names, {k for r in rows for k in r}))
    if len(df):
        df = df.sort_values("trial_number", kind="stable").reset_index(drop=True)
    return df


def was_trained(trial: Any) -> bool:
    """False for an Optuna trial of the study that nobody trained: a configuration predicted
    infeasible, marked ``trained: false`` (or, in sweeps written before, ``infeasible: true``,
    told with invented values). Every reader of the study leaves such trials out."""
    attrs = trial.user_attrs
    return attrs.get("trained", True) is not False and not attrs.get("infeasible")


def sweep_meta(path: str | Path | Storage) -> dict[str, Any]:
    """The sweep's ``sweep.json`` at a local folder or a storage URI (``s3://``, ``gs://``)."""
    st = Storage.open(path, field="path")
    if st.local_path is None:
        st.check(field="path")
    if not st.is_file(SWEEP):
        raise SpecError("path", "must be a sweep folder (holding sweep.json)", st.uri if st.local_path is None
                        else str(st.local_path))
    return json.loads(st.read_bytes(SWEEP))


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a sweep's results (a local folder or a URI: ``s3://…``, ``gs://…``): one row per trial.

    Schema (``df.attrs["objectives"]`` maps each objective to ``"max"``/``"min"``). Whole-number
    columns (counts, bytes, trial numbers, integer parameters; :func:`int_columns`) are
    nullable integers (``Int64``): ``<NA>`` where a row has no value.

    ===================  ===========================================================
    ``trial_id``         Ray Tune trial id (also the artifact's file stem)
    ``trial_number``     Optuna trial number in ``study.db`` (0, 1, ...)
    ``status``           ``ok`` | ``failed`` | ``stopped`` (early, by the two-objective
                         stopper) | ``infeasible`` (predicted to break a size constraint;
                         never trained)
    parameters           one column per sampled or fixed parameter, named as in the
                         spec: ``lr``, ``batch_size``, ``depth``, ``width``,
                         ``weight_decay``, ``epochs``, ``prune_method``, ``sparsity``,
                         ``finetune_epochs``, ``bits``, ``per_channel``, ``symmetric``,
                         ``bits_first``, ``bits_last``, ``bits_assign``,
                         ``distill_weight``, ``distill_temperature``
                         (NaN/None where a conditional parameter did not apply)
    ``seed``             the trial's seed (derived from the sweep seed and number)
    ``accuracy``/``r2``  validation metric of the *compressed* model
    ``loss``             validation loss of the compressed model
    ``test_accuracy``/``test_r2``/``test_loss``  the same on the held-out test split
    ``size_bytes``       length in bytes of the trial's artifact file
    ``dense_bytes``      the same model as dense fp32 in the same container
    ``compression_ratio``  ``dense_bytes / size_bytes``
    ``params``           parameters of the compressed model
    ``nonzero_params``   parameters that are not zero
    ``latency_ms``       median CPU latency at batch size 1
    ``train_seconds``    training + compression time of the trial
    ``feasible``         every spec constraint holds (always True without constraints)
    ``node``, ``device``  ``host/node-id`` of the Ray node that ran the trial; ``cpu`` or ``cuda``
    ``error``            error text of a failed trial (None when ok)
    ``artifact``         artifact path relative to the sweep folder (``compress.load`` it)
    ``ended_at``         Unix time at which the driver recorded the row
    ``parent``           for a ladder rung: the trial number of the trained model it
                         compresses; for a promotion (``search.promote``): the trial
                         number of the configuration it retrains at a longer budget
                         (None for new configurations)
    ``budget``           with ``search.promote``: the epochs of the trial's rung (its
                         ``epochs``); a row with ``parent`` and ``budget`` is a promotion
    ``predicted_size_bytes``  size predicted before training (when constraints or early
                         stopping use it)
    ``layer_bits``       each Linear/Conv layer's stored width in layer order, e.g.
                         ``"8,4,4,8"`` (None without quantization); ``avg_bits`` their mean
                         over the weights
    ``teacher``, ``teacher_trial``  with ``compress.distill``: the dense model (``teachers/<n>.slim``)
                         and trial its fine-tuning and QAT distilled from (None: none stored yet)
    ``dense_accuracy``/``dense_r2``, ``dense_artifact``  with ``compress.distill``: this trial's
                         dense model before compression: its validation metric and stored file
    ===================  ===========================================================
    """
    st = Storage.open(path, field="path")
    meta = sweep_meta(st)
    df = integer_columns(_read_table(st, meta))
    df.attrs["objectives"] = dict(meta["objectives"])
    df.attrs["constraints"] = meta.get("constraints", {})
    df.attrs["name"] = meta["name"]
    return df
