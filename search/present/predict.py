"""Predictions from an export (:mod:`search.present.export`): ``predict`` reads a CSV of feature
columns in training order (or an ``.npz`` with an array ``x``), applies the training
preprocessing (stored in the manifest; the ONNX and C exports apply it themselves) and returns
class labels (or regression values). A C export (a folder) is compiled here to run."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from slimtune.search.present.deploy_export import C_MANIFEST
from slimtune.search.present.export import (
    EXTRA_FILE,
    MANIFEST_KEY,
    TRUST_FLAG,
    ZIP_MAGIC,
    model_from_artifact,
    sidecar,
)
from slimtune.spaces import SpecError


@dataclass(frozen=True)
class Exported:
    """A loaded export: ``logits(x)`` maps a float32 array ``(rows, *input_shape)`` to outputs."""

    format: str
    manifest: dict[str, Any]
    logits: Callable[[np.ndarray], np.ndarray]

    @property
    def input_shape(self) -> list[int]:
        return list(self.manifest["model"]["input_shape"])

    def model_input(self, features: np.ndarray) -> np.ndarray:
        """CSV feature rows ``(rows, features)`` → the model's input, preprocessed as in training."""
        pre = self.manifest["preprocess"]
        n = math.prod(self.input_shape)
        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if x.shape[1] != n:
            raise SpecError("data", f"needs {n} feature columns (as in training, same order)",
                            f"{x.shape[1]} columns")
        if not self.manifest.get("raw_input"):
            x = (x - np.asarray(pre["x_mean"], dtype=np.float64)) / np.asarray(pre["x_std"], dtype=np.float64)
        return np.ascontiguousarray(x.reshape(len(x), *self.input_shape), dtype=np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class labels (classification) or values in the target's units (regression)."""
        out = self.logits(self.model_input(features))
        pre = self.manifest["preprocess"]
        if self.manifest["model"]["kind"] == "classification":
            return np.asarray(pre["classes"], dtype=object)[np.argmax(out, axis=1)]
        y = out.reshape(len(out), -1)[:, 0].astype(np.float64)
        if pre.get("y_std") is not None and not self.manifest.get("raw_input"):
            y = y * float(pre["y_std"]) + float(pre.get("y_mean") or 0.0)
        return y


def export_format(path: str | Path) -> str:
    """``slim``, ``torchscript`` or ``onnx``, from the file's first bytes; ``c`` for a folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.c").is_file() or not (path / C_MANIFEST).is_file():
            raise SpecError("model", "a folder must be a C export (model.c and slimtune.json in it)", str(path),
                            "write it with `slimtune export --format c --out DIR`")
        return "c"
    if not path.is_file():
        raise SpecError("model", "must be an existing file or a C export's folder", str(path))
    with open(path, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        return "torchscript"
    from slimtune.compress import read_manifest

    try:
        read_manifest(path)  # any artifact format compress reads
    except Exception:
        return "onnx"
    return "slim"


def load_exported(path: str | Path, *, batch: int = 1024, trust_code: bool = False) -> Exported:
    """Load a file written by :func:`export_trial` (any of the three formats).

    ``trust_code``: a ``slim`` model that is a ``module:function`` hook is imported only with it,
    and a C export (a folder) is compiled and run only with it.
    """
    fmt = export_format(path)
    path = Path(path)
    if fmt == "c":
        if not trust_code:
            raise SpecError("model", f"a C export is compiled and run on this machine only with {TRUST_FLAG}",
                            str(path), f"pass {TRUST_FLAG} if you trust where this folder came from")
        manifest = json.loads((path / C_MANIFEST).read_text())
        batch = 1 << 30  # one compiled harness for all rows

        def run(x: np.ndarray) -> np.ndarray:
            from slimtune.search.deploy import NoCompiler, run_export

            try:
                return run_export(path, x)
            except NoCompiler as exc:
                raise SpecError("model", "a C export runs only with a C compiler here", str(path), str(exc)) from None
    elif fmt == "slim":
        side = sidecar(path)
        if not side.is_file():
            raise SpecError("model", "a slim model needs its manifest beside it", str(side),
                            "write it with `slimtune export`, which puts model.slim.json next to model.slim")
        manifest = json.loads(side.read_text())
        folder = str(manifest.get("sweep", {}).get("folder", ""))
        meta = _local_meta(folder)
        model = model_from_artifact(path, meta.get("base_dir"), trust_code=trust_code)
        run = _torch_runner(model)
    elif fmt == "torchscript":
        import torch

        extra = {EXTRA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            except Exception as exc:
                raise SpecError("model", "must be a slimtune export (slim, onnx or torchscript)", str(path),
                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        if not extra[EXTRA_FILE]:
            raise SpecError("model", f"a TorchScript file must carry {EXTRA_FILE}", str(path),
                            "write it with `slimtune export --format torchscript`")
        manifest = json.loads(extra[EXTRA_FILE])
        run = _torch_runner(module.eval())
    else:
        manifest, run = _onnx_runner(path)

    def logits(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [run(x[i:i + batch]) for i in range(0, len(x), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, manifest["model"]["n_outputs"]), np.float32)

    return Exported(fmt, manifest, logits)


def _onnx_runner(path: Path) -> tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray]]:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise SpecError("model", "must be a slimtune export (slim, onnx or torchscript)", str(path),
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    manifest = _onnx_manifest(sess, path)
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return manifest, run


def _onnx_manifest(sess, path: Path) -> dict[str, Any]:
    """A dense export's manifest (its metadata), a compressed one's (the sidecar), or, for a
    compressed file without its sidecar, what the file itself says: input shape and labels."""
    meta = sess.get_modelmeta().custom_metadata_map
    if MANIFEST_KEY in meta:
        return json.loads(meta[MANIFEST_KEY])
    side = sidecar(path)
    if side.is_file():
        return json.loads(side.read_text())
    if sess.get_inputs()[0].name != "x" or "classes" not in meta and len(sess.get_outputs()[0].shape) != 2:
        raise SpecError("model", "must be a slimtune export (slim, onnx, torchscript or a C folder)", str(path),
                        "write it with `slimtune export --format onnx`")
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    shape = [int(d) for d in sess.get_inputs()[0].shape[1:]]
    n_out = int(sess.get_outputs()[0].shape[1])
    return {"raw_input": True, "model": {"kind": "classification" if classes is not None else "regression",
                                         "input_shape": shape, "n_outputs": n_out},
            "preprocess": {"classes": classes, "target": None, "x_mean": 0.0, "x_std": 1.0}}


def _local_meta(folder: str) -> dict[str, Any]:
    """The sweep.json of an export's sweep where it is a folder on this machine, else {} (a sweep
    at a URI: its spec folder is not on this machine either)."""
    if not folder or "://" in folder:
        return {}
    path = Path(folder) / "sweep.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _torch_runner(model) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def read_features(csv: str | Path, exported: Exported) -> np.ndarray:
    """The feature rows of a CSV for ``exported``: with or without a header row; a column
    named as the training target is dropped. An ``.npz`` gives them as its array ``x``
    (``(rows, *input_shape)`` or ``(rows, features)``), as training reads one."""
    csv = Path(csv)
    if not csv.is_file():
        raise SpecError("data", "must be an existing CSV or .npz file", str(csv))
    if csv.suffix.lower() == ".npz":
        return _read_npz(csv, exported)
    try:
        first = pd.read_csv(csv, header=None, nrows=1, dtype=str, keep_default_na=False)
        headerless = len(first) and all(_is_number(v) for v in first.iloc[0])  # the first line is data
        df = pd.read_csv(csv, header=None if headerless else "infer")
    except Exception as exc:
        raise SpecError("data", "must be a readable CSV file", str(csv), str(exc).splitlines()[0]) from None
    if len(df) == 0:
        raise SpecError("data", "must hold at least one row of features", f"{csv} with a header row only")
    target = exported.manifest["preprocess"].get("target")
    if target is not None and target in df.columns:
        df = df.drop(columns=[target])
    n = math.prod(exported.input_shape)
    if df.shape[1] != n:
        raise SpecError("data", f"needs {n} feature columns (as in training, same order)",
                        f"{df.shape[1]} columns in {csv}")
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            raise SpecError("data", f"feature column {col!r} must be numeric", str(df[col].iloc[0]))
        if df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise SpecError("data", f"feature column {col!r} must have no missing values",
                            f"an empty cell in row {row}")
    return df.to_numpy(dtype=np.float64)


def _read_npz(path: Path, exported: Exported) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise SpecError("data", "a .npz needs an array named x (the feature rows)", str(path),
                                f"it has {sorted(z.files)}")
            x = np.asarray(z["x"], dtype=np.float64)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError("data", "must be a readable .npz file", str(path), str(exc).splitlines()[0]) from None
    n = math.prod(exported.input_shape)
    if x.ndim < 1 or len(x) == 0 or x.reshape(len(x), -1).shape[1] != n:
        raise SpecError("data", f"array x needs rows of {n} features (input shape {exported.input_shape})",
                        f"shape {list(x.shape)} in {path}")
    if not np.isfinite(x).all():
        raise SpecError("data", "array x must hold finite numbers only", f"{path}")
    return x.reshape(len(x), -1)


def _is_number(text: Any) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def predict_csv(model: str | Path, csv: str | Path, *, trust_code: bool = False) -> pd.DataFrame:
    """Predictions of the exported ``model`` for each row of ``csv``: one column ``prediction``
    (``trust_code`` as for :func:`load_exported`)."""
    exported = load_exported(model, trust_code=trust_code)
    return pd.DataFrame({"prediction": exported.predict(read_features(csv, exported))})
