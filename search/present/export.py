"""Deployable exports of a sweep's trial (predictions from them: :mod:`search.present.predict`).

Three formats, each carrying the same manifest (JSON, see :func:`export_manifest`: the trial's
metrics and parameters from its results row, the model's recipe and compression configs, the
preprocessing, library versions):

* ``slim``        the trial's artifact, byte for byte (its length is the trial's ``size_bytes``;
                  ``compress.load`` reads it), plus the manifest in a sidecar ``<file>.json``;
* ``torchscript`` ``torch.jit.trace`` of the model, manifest in ``_extra_files["slimtune.json"]``;
* ``onnx``        the compressed ONNX of :mod:`search.deploy` (integer codes dequantized by
                  ``DequantizeLinear``, raw features in), manifest in ``<file>.json``; with
                  ``dense=True`` dense fp32 from ``torch.onnx.export``, manifest in its
                  ``metadata_props["slimtune"]`` (:mod:`search.present.deploy_export`);
* ``c``           a folder: ``model.h``, ``model.c`` (C99 for microcontrollers), ``slimtune.json``.

Both ONNX files and the C export are checked when written: their outputs equal PyTorch's on
seeded inputs within a stated tolerance. TorchScript holds the model as dense fp32.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slimtune.search.results.pareto import pareto_front
from slimtune.search.results.table import load_results, sweep_meta, write_atomic
from slimtune.search.storage import Storage
from slimtune.spaces import BUILTIN_DATASETS, SpecError, shown_columns

FORMATS = {"slim": ".slim", "onnx": ".onnx", "onnx-dense": ".onnx", "torchscript": ".pt", "c": ""}  # c: a folder
MANIFEST_KEY = "slimtune"  # the dense ONNX file's metadata_props key
EXTRA_FILE = "slimtune.json"  # TorchScript _extra_files name
EXPORT_VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"
#: The keyword (the CLI's ``--trust-code``) that lets a model hook be imported; errors name it so.
TRUST_FLAG = "trust_code=True"

#: How the built-in datasets turn a CSV row into the model input, when sweep.json has no
#: ``preprocess``: digits rows are scikit-learn's ``load_digits().data`` (pixels 0..16,
#: the model saw them / 16); MNIST-1D rows are the dataset's values as they are.
BUILTIN_PREPROCESS = {"digits": {"x_mean": 0.0, "x_std": 16.0}, "mnist1d": {"x_mean": 0.0, "x_std": 1.0}}


# ------------------------------------------------------------------ export


def find_trial(df: pd.DataFrame, trial: str | int) -> pd.Series:
    """The row of ``df`` named by a trial number (``3``) or a Ray trial id; must have finished."""
    key = str(trial).strip()
    number = key.removesuffix(".0")
    rows = df[df["trial_id"].astype(str) == key]  # first: a Ray trial id may be all digits
    if not len(rows) and number.isdigit():
        rows = df[df["trial_number"] == int(number)]
    if not len(rows):
        raise SpecError("trial", "must be a trial number or trial id of the sweep", key,
                        f"known trial numbers: {_ranges(df['trial_number'].dropna())}")
    row = rows.iloc[0]
    if row["status"] != "ok":
        raise SpecError("trial", "must be a finished trial (status ok)", key,
                        f"trial {int(row['trial_number'])} failed: {row['error']}")
    return row


def _ranges(numbers) -> str:
    """``0-41, 43, 45-97`` for sorted trial numbers; ``none yet`` without any."""
    ns = sorted({int(n) for n in numbers})
    runs: list[str] = []
    for n in ns:
        if runs and int(runs[-1].split("-")[-1]) == n - 1:
            runs[-1] = f"{runs[-1].split('-')[0]}-{n}"
        else:
            runs.append(str(n))
    return ", ".join(runs) or "none yet"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("slimtune", "torch", "numpy", "optuna", "ray", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def preprocess_of(meta: dict[str, Any], kind: str, n_outputs: int) -> dict[str, Any]:
    """How ``predict`` turns a CSV row into the model input and an output into a prediction.

    ``x_mean``/``x_std``: a number or one per flattened feature, applied as ``(x - mean) / std``;
    ``classes``: the label of each output (classification); ``y_mean``/``y_std``: applied as
    ``y * std + mean`` to the model's output (regression); ``target``: the label column's name,
    dropped from a predict CSV that has it. Taken from ``sweep.json``'s ``preprocess`` when the
    sweep stored it, else known for the built-in datasets.
    """
    stored = meta.get("preprocess")
    dataset = str((meta.get("spec") or {}).get("task", {}).get("dataset", ""))
    if stored is None:
        if dataset not in BUILTIN_DATASETS:
            raise SpecError("sweep.json", "must hold the training statistics of the features (key 'preprocess') "
                            "to export a model trained on user data", dataset,
                            "re-run the sweep with a slimtune that stores them")
        stored = BUILTIN_PREPROCESS[dataset]
    pre = {"x_mean": 0.0, "x_std": 1.0, "classes": None, "y_mean": None, "y_std": None, "target": None}
    pre.update({k: v for k, v in stored.items() if k in pre})
    if kind == "classification" and pre["classes"] is None:
        pre["classes"] = list(range(n_outputs))
    return pre


def export_manifest(path: str | Path, row: pd.Series, fmt: str, blob: bytes | None = None) -> dict[str, Any]:
    """The manifest an export carries: what the model is, how it was found, how to feed it.
    ``blob``: the trial's artifact bytes, when already read (else read from the sweep)."""
    st = Storage.open(path, "path")
    meta = sweep_meta(st)
    art = load_artifact(artifact_bytes(st, row) if blob is None else blob, field="artifact", manifest_only=True)
    recipe = art["recipe"]
    kind = meta.get("kind", "classification")
    n_out = int(recipe.get("output_dim", 1))
    df = load_results(path)
    front = pareto_front(df)
    metric_cols = [*shown_columns("export"), "feasible"]
    return {
        "slimtune_export": EXPORT_VERSION,
        "format": fmt,
        "sweep": {"name": meta["name"], "folder": str(st.local_path.resolve()) if st.local_path else st.uri,
                  "created": meta.get("created"),
                  "objectives": meta["objectives"], "constraints": meta.get("constraints", {})},
        "trial": {"trial_number": int(row["trial_number"]), "trial_id": str(row["trial_id"]),
                  "seed": _jsonable(row["seed"]), "artifact": str(row["artifact"]),
                  "on_front": bool(row["trial_id"] in set(front["trial_id"]))},
        "params": {k: _jsonable(row[k]) for k in meta["params"] if k in row.index},
        "metrics": {k: _jsonable(row[k]) for k in metric_cols if k in row.index and _jsonable(row[k]) is not None},
        "model": {"kind": kind, "input_shape": list(recipe["input_shape"]), "n_outputs": n_out,
                  "recipe": recipe, "configs": _configs(art, row)},
        "preprocess": preprocess_of(meta, kind, n_out),
        "spec": meta.get("spec", {}),
        "versions": library_versions(),
        **({"artifact_versions": art["versions"]} if "versions" in art else {}),  # formats 1-2 recorded them
    }


def _configs(art: dict[str, Any], row: pd.Series) -> list[dict[str, Any]]:
    """The compression configs of a trial: an artifact of format 1-2 records them; from format 3
    on the artifact holds only the model, and the row's parameters give them."""
    if "configs" in art:
        return art["configs"]
    import dataclasses

    from slimtune import compress
    from slimtune.search.trial import compression_configs

    def as_json(c: Any) -> dict[str, Any]:
        try:
            return compress.config_to_json(c)
        except TypeError:  # a declared method's own config type: recorded, not rebuildable by compress
            return {"_type": type(c).__name__, "_data": dataclasses.asdict(c)}

    return [as_json(c) for part in compression_configs(row.to_dict()) for c in part]


def load_artifact(src: Any, *, trust_code: bool = False, field: str = "model", manifest_only: bool = False,
                  label: str | None = None):
    """`compress.load` (or `read_manifest`) for search and the CLI: a bad or untrusted
    artifact is a one-line SpecError (exit 2) that names the fix (``label`` names ``src``)."""
    from slimtune import compress

    where = label or (f"{len(src)} bytes" if isinstance(src, (bytes, bytearray)) else str(src))
    try:
        if manifest_only:
            return compress.read_manifest(src)
        return compress.load(src, trust_code=trust_code)
    except compress.UntrustedCodeError as exc:
        raise SpecError(field, f"imports and runs its model code {exc.hook!r} only with {TRUST_FLAG}", where,
                        f"pass {TRUST_FLAG} if you trust where this sweep came from") from None
    except compress.ArtifactError as exc:
        raise SpecError(field, "must be a valid slimtune artifact", where, str(exc)) from None


def export_trial(path: str | Path, trial: str | int, fmt: str, out: str | Path, *, trust_code: bool = False) -> Path:
    """Write trial ``trial`` (number or id) of the sweep at ``path`` as ``fmt`` to ``out``.

    ``fmt``: ``slim``, ``onnx`` (compressed), ``onnx-dense`` (dense fp32), ``torchscript``, or
    ``c`` (``out`` is a folder: ``model.h``, ``model.c``, ``slimtune.json``).
    ``trust_code``: a trial whose model is a ``module:function`` hook is imported and run
    only with it (the ``slim`` format copies the bytes and runs nothing).
    """
    if fmt not in FORMATS:
        raise SpecError("fmt", f"must be one of {', '.join(FORMATS)}", fmt)
    st = Storage.open(path, "path")
    row = find_trial(load_results(st), trial)
    blob = artifact_bytes(st, row)
    out = Path(out)
    if out.is_dir() and fmt != "c":
        raise SpecError("out", "must be a file path, not a folder", str(out),
                        f"e.g. {out / ('model' + FORMATS[fmt])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = export_manifest(st, row, fmt, blob)
    if fmt == "slim":
        write_atomic(out, blob)
        write_atomic(sidecar(out), json.dumps(manifest, indent=2).encode())
        return out
    model = model_from_artifact(blob, sweep_meta(st).get("base_dir"), trust_code=trust_code, field="artifact",
                                label=st.uri_of(str(row["artifact"])))
    from slimtune.search.present import deploy_export

    if fmt == "torchscript":
        _write_torchscript(model, manifest, out)
    elif fmt == "c":
        deploy_export.write_c_folder(model, manifest, out)
    elif fmt == "onnx-dense":
        deploy_export.write_dense_onnx(model, manifest, out)
    else:
        deploy_export.write_onnx(model, manifest, out)
    return out


def artifact_bytes(storage: Storage, row: pd.Series) -> bytes:
    """The bytes of ``row``'s artifact in the sweep at ``storage`` (a folder or a URI)."""
    rel = str(row["artifact"])
    if not storage.is_file(rel):
        raise SpecError("artifact", "the trial's artifact file must exist", storage.uri_of(rel),
                        "was the sweep folder copied without artifacts/?")
    return storage.read_bytes(rel)


def load_model(path: str | Path, trial: str | int, *, trust_code: bool = False):
    """The compressed model of trial ``trial`` (number or Ray trial id) of the sweep at ``path``.

    ``path``: a sweep folder or a URI (``s3://…``, ``gs://…``; credentials from the standard
    chains). The artifact is read through the storage seam and given to ``compress.load`` as
    bytes. ``trust_code``: a ``module:function`` model is imported and run only with it.
    """
    st = Storage.open(path, "path")
    row = find_trial(load_results(st), trial)
    return model_from_artifact(artifact_bytes(st, row), sweep_meta(st).get("base_dir"), trust_code=trust_code,
                               label=st.uri_of(str(row["artifact"])))


def model_from_artifact(artifact: str | Path | bytes, code_dir: str | None = None, *, trust_code: bool = False,
                        field: str = "model", label: str | None = None):
    """`load_artifact`, with the sweep's spec folder importable; a trusted ``module:function``
    model that cannot be imported here is one line (SpecError), not a traceback. ``label``
    names the artifact in errors (``artifact`` given as bytes)."""
    from slimtune.search.task.data import importable

    importable(code_dir)
    label = label or str(artifact)
    try:
        return load_artifact(artifact, trust_code=trust_code, field=field, label=label)
    except SpecError as exc:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, (ImportError, AttributeError)):
            cause = cause.__cause__
        if cause is None:
            raise
        raise SpecError("model", "its module:function model must be importable here", label,
                        f"{cause}; run from the spec's folder or add it to PYTHONPATH") from None


def sidecar(path: str | Path) -> Path:
    """The manifest file beside a ``slim`` export: ``model.slim`` → ``model.slim.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _probe(shape: list[int], n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)


def _write_torchscript(model, manifest: dict[str, Any], out: Path) -> None:
    import io

    import torch

    example = torch.from_numpy(_probe(manifest["model"]["input_shape"], 2))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buf, _extra_files={EXTRA_FILE: json.dumps(manifest)})
    write_atomic(out, buf.getvalue())
