"""Tasks: built-in and user data, split by the task's own seed (``task.split_seed``).

The split is a property of the task, not of a sweep: every sweep of a task sees the same
training, validation and test rows, whatever its search seed, so test numbers of two sweeps
compare. Data is built once per sweep in the driver (before any trial is seeded) and shared
with every trial through Ray's object store.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from slimtune.search.storage import write_local_atomic
from slimtune.spaces import SpecError, Task

MIN_ROWS = {"train": 8, "validation": 2, "test": 2}


@dataclass(frozen=True)
class Data:
    """Train/validation/test arrays (float32 inputs; int64 labels or float32 targets)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    kind: str  # classification | regression
    n_outputs: int  # classes, or 1 for regression
    #: How a raw row became the model input, and an output a prediction (JSON values):
    #: ``x_mean``/``x_std`` (a number or one per flattened feature, ``(x - mean) / std``),
    #: ``classes`` (original label of each output), ``y_mean``/``y_std`` (regression),
    #: ``target`` (CSV label column). Stored in sweep.json for ``slimtune predict``.
    preprocess: dict = field(default_factory=dict, compare=False)

    @property
    def input_shape(self) -> list[int]:
        return list(self.x_train.shape[1:])


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMTUNE_CACHE", Path.home() / ".cache" / "slimtune"))


def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D with the published arguments (4000 train / 1000 test, length 40), cached on disk."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=True)
    key = hashlib.sha256(repr(sorted(args.items())).encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["x"], z["y"], z["x_test"], z["y_test"]
    # make_dataset reseeds the global RNGs: keep the caller's state untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    out = (d["x"].astype(np.float32), d["y"].astype(np.int64),
           d["x_test"].astype(np.float32), d["y_test"].astype(np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, x=out[0], y=out[1], x_test=out[2], y_test=out[3])
    write_local_atomic(path, buf.getvalue())
    return out


def _infer_kind(y: np.ndarray) -> str:
    if y.dtype.kind in "OUSb":
        return "classification"
    if np.all(np.equal(np.mod(y, 1), 0)) and len(np.unique(y)) <= 20:
        return "classification"
    return "regression"


def _read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for malformed files
        raise SpecError("task.dataset", "must be a readable CSV file", str(path), str(exc).splitlines()[0]) from None
    if len(df) == 0:
        raise SpecError("task.dataset", "a CSV needs data rows below its header", f"{path} with a header row only")
    if df.shape[1] < 2:
        raise SpecError("task.dataset", "a CSV needs at least one feature column and a target column",
                        f"{path} with columns {list(df.columns)}")
    target = target if target is not None else df.columns[-1]
    if target not in df.columns:
        from slimtune.spaces._errors import closest

        raise SpecError("task.target", "must name a column of the CSV", target, closest(target, map(str, df.columns)))
    y = df[target]
    if y.isna().any():
        row = int(np.flatnonzero(y.isna().to_numpy())[0]) + 2
        raise SpecError("task.target", "every row needs a label", f"an empty {target!r} at line {row} of {path}")
    feats = df.drop(columns=[target])
    for col in feats.columns:
        if not pd.api.types.is_numeric_dtype(feats[col]) or pd.api.types.is_bool_dtype(feats[col]):
            text = feats[col][pd.to_numeric(feats[col], errors="coerce").isna()]
            bad = text.iloc[0] if len(text) else feats[col].iloc[0]
            raise SpecError("task.dataset", f"feature column {col!r} must be numeric", bad,
                            "encode text columns as numbers first")
        if feats[col].isna().any():
            raise SpecError("task.dataset", f"feature column {col!r} must have no missing values", "NaN")
    return feats.to_numpy(np.float32), y.to_numpy(), {"target": target}


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise SpecError("task.dataset", "a .npz needs arrays named x and y", f"{path} with {sorted(z.files)}")
            return z["x"], z["y"]
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError("task.dataset", "must be a readable .npz file", str(path), str(exc).splitlines()[0]) from None


def _call_hook(spec: str) -> tuple[np.ndarray, np.ndarray]:
    from slimtune.search.task.hooks import resolve

    try:
        func = resolve(spec)
    except (ImportError, AttributeError) as exc:
        raise SpecError("task.dataset", "module:function must be importable", spec, str(exc)) from None
    out = func()
    if isinstance(out, dict) and "x" in out and "y" in out:
        out = (out["x"], out["y"])
    if not (isinstance(out, tuple) and len(out) == 2):
        raise SpecError("task.dataset", "the function must return (x, y) or {'x': ..., 'y': ...}",
                        f"{spec} returned {type(out).__name__}")
    return np.asarray(out[0]), np.asarray(out[1])


def _encode_labels(y: np.ndarray, kind: str) -> tuple[np.ndarray, int, list | None]:
    if kind == "classification":
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise SpecError("task.target", "classification needs at least 2 classes", classes.tolist())
        return codes.astype(np.int64), int(len(classes)), [c.item() if hasattr(c, "item") else c for c in classes]
    if y.dtype.kind not in "iuf":
        raise SpecError("task.kind", "regression needs a numeric target", str(y.dtype))
    return y.astype(np.float32), 1, None


def _split(n: int, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    k = int(round(n * frac))
    return perm[k:], perm[:k]


def sweep_split_seed(meta: dict) -> int:
    """The seed a sweep's data was split with, from its ``sweep.json`` dict: recorded there
    (``split_seed``) since the split has its own seed; a sweep written before that was split
    by its search seed, and keeps that split when resumed, extended or used for a warm start."""
    if meta.get("split_seed") is not None:
        return int(meta["split_seed"])
    return int(((meta.get("spec") or {}).get("search") or {}).get("seed", 0))


def load_data(task: Task, seed: int | None = None, base_dir: Path | None = None) -> Data:
    """Load ``task``'s data and split it reproducibly from ``seed`` (default: ``task.split_seed``;
    a sweep written before the split had its own seed passes the search seed it was split with).

    The test split is held out and only ever used for the ``test_*`` twins of the metrics.
    Raises :class:`SpecError` for a missing or malformed file.
    """
    ds = task.dataset
    x, y, x_test, y_test, target = _read_dataset(task, base_dir)
    x = _checked(x, y)
    kind = task.kind or _infer_kind(y)
    rng = np.random.default_rng(task.split_seed if seed is None else seed)
    if x_test is None:
        train_idx, test_idx = _split(len(x), task.test_split, rng)
        x, y, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    all_y, n_out, classes = _encode_labels(np.concatenate([y, y_test]), kind)
    pre: dict = {"x_mean": 0.0, "x_std": 16.0 if ds == "digits" else 1.0, "classes": classes, "target": target}
    y, y_test = all_y[: len(y)], all_y[len(y):]
    train_idx, val_idx = _split(len(x), task.validation_split, rng)
    x_tr, y_tr, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    for split, arr in (("train", x_tr), ("validation", x_val), ("test", x_test)):
        if len(arr) < MIN_ROWS[split]:
            raise SpecError("task.dataset", f"the {split} split needs at least {MIN_ROWS[split]} rows",
                            f"{len(arr)} rows from {len(x) + len(x_test)} in all", "add rows or change the splits")
    if ds not in ("digits", "mnist1d") and x_tr.dtype.kind == "f":  # user data: standardise with training statistics
        mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
        x_tr, x_val, x_test = ((a - mu) / sd for a in (x_tr, x_val, x_test))
        pre.update(x_mean=mu.reshape(-1).tolist(), x_std=sd.reshape(-1).tolist())
        if kind == "regression":
            ym, ys = y_tr.mean(), y_tr.std() + 1e-8
            y_tr, y_val, y_test = ((a - ym) / ys for a in (y_tr, y_val, y_test))
            pre.update(y_mean=float(ym), y_std=float(ys))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.int64 if a.dtype.kind in "iu" else np.float32)  # noqa: E731
    return Data(f32(x_tr), y_tr, f32(x_val), y_val, f32(x_test), y_test, kind, n_out, pre)


def _read_dataset(task: Task, base_dir: Path | None) -> tuple:
    """``(x, y, x_test, y_test, target)`` as the dataset gives them (no test split: None, None;
    ``target``: the CSV column read, else None)."""
    ds = task.dataset
    if ds == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64), None, None, None
    if ds == "mnist1d":
        return (*_mnist1d(), None)
    if ds.endswith((".csv", ".npz")):
        path = Path(ds)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise SpecError("task.dataset", "must be an existing file", str(path))
        if ds.endswith(".csv"):
            x, y, info = _read_csv(path, task.target)
            return x, y, None, None, info["target"]
        return (*_read_npz(path), None, None, None)
    return (*_call_hook(ds), None, None, None)


def _checked(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x`` as float32 (integer features, e.g. token ids: int64, reaching the model as torch.long)
    once shapes, types and values are checked."""
    if x.ndim < 2 or len(x) != len(y) or y.ndim != 1:
        raise SpecError("task.dataset", "x must be (rows, features...) and y (rows,) with equal rows",
                        f"x{tuple(x.shape)} y{tuple(y.shape)}")
    if x.dtype.kind not in "iuf":
        raise SpecError("task.dataset", "features must be numeric", str(x.dtype))
    if x.dtype.kind in "iu":
        return x.astype(np.int64)
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise SpecError("task.dataset", "features must be finite", "NaN or inf")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise SpecError("task.dataset", "targets must be finite", "NaN or inf in y")
    return x


def importable(code_dir: str | Path | None) -> None:
    """Make ``module:function`` hooks beside the spec importable without PYTHONPATH, in the driver
    and in each trial's worker process: the spec's folder is *appended* to ``sys.path``.

    Appended, not put first: a file beside the spec is found only under a name nothing installed
    already has, so it can never shadow slimtune (whose modules all live under ``slimtune``) nor
    a package slimtune imports. A hook whose module name an installed package also has is
    refused by name where it is resolved (`hook_module`).

    A node that does not have the folder (a remote cluster) gets nothing here: `slimtune
    submit` ships the spec's folder as the Ray job's ``working_dir``, which Ray puts on the
    path of the job's driver and of every worker it starts.
    """
    import sys

    if code_dir and Path(code_dir).is_dir() and str(code_dir) not in sys.path:
        sys.path.append(str(code_dir))


def check_no_shadow(*folders: str | Path | None) -> None:
    """Refuse a ``slimtune.py`` or foreign ``slimtune/`` package in the folders Ray puts *first* on
    its workers' ``sys.path`` (the driver's current folder; a submitted job's ``working_dir``):
    there it would be imported instead of slimtune and every trial would fail."""
    import slimtune

    ours = Path(slimtune.__file__).resolve().parent
    for folder in folders:
        if not folder:
            continue
        for name in ("slimtune.py", "slimtune"):
            path = Path(folder) / name
            foreign = path.is_file() or (path.is_dir() and path.resolve() != ours
                                         and (path / "__init__.py").exists())
            if foreign:
                raise SpecError(str(path), "no file or package named slimtune may sit in the folder a sweep runs "
                                "from (Ray puts that folder first on its workers' import path, where it would "
                                "shadow slimtune)", str(path), "rename it")


def check_hooks_resolve(hooks: Iterable[tuple[str, str]], code_dir: str | Path | None) -> None:
    """Each ``(field, "module:function")`` hook whose module sits beside the spec must import from
    there: a name an installed module also has resolves to that module (the spec's folder is
    appended to ``sys.path``), so it is refused with the path it would get instead."""
    import importlib.util

    if not code_dir:
        return
    code_dir = Path(code_dir).resolve()
    for where_in_spec, hook in hooks:
        top = hook.partition(":")[0].split(".")[0]
        beside = [p for p in (code_dir / f"{top}.py", code_dir / top) if p.exists()]
        if not top or not beside:
            continue
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        where = Path(found.origin).resolve() if found and found.origin else None
        if where is not None and code_dir not in where.parents:
            raise SpecError(where_in_spec, f"the module {top!r} beside the spec must not share its name with an "
                            f"installed module (that one, {where}, is what would be imported)", hook,
                            f"rename {beside[0].name}")


def hooks_folder(hooks: Iterable[str]) -> str | None:
    """The folder the first importable ``module:function`` hook is imported from (the ``sys.path``
    entry that holds its top-level module): what a sweep records as its ``base_dir`` when it was
    started without one (from Python), so its exports import the hook from the same place."""
    import importlib.util

    for hook in hooks:
        module = hook.partition(":")[0]
        try:
            found = importlib.util.find_spec(module.split(".")[0])
        except (ImportError, ValueError):
            continue
        if found is None or not found.origin or found.origin in ("built-in", "frozen"):
            continue
        origin = Path(found.origin).resolve()
        return str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)
    return None
