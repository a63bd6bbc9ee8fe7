"""The ONNX and C exports of a trial, each checked against PyTorch when written.

* ``onnx`` (default): :mod:`search.deploy`'s compressed ONNX (integer codes, ``DequantizeLinear``,
  raw features in, class labels in ``metadata_props["classes"]``), the manifest in a sidecar
  ``<file>.json``; ``dense=True``: ``torch.onnx.export`` of the model as dense fp32 with the
  preprocessing in front, the manifest in ``metadata_props["slimtune"]``.
* ``c``: a folder with ``model.h``, ``model.c`` and the manifest ``slimtune.json``; compiled and
  run here when a C compiler is present (``flash_bytes``/``ram_bytes`` in the manifest).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from slimtune.search import deploy
from slimtune.search.results.table import write_atomic
from slimtune.spaces import SpecError

#: onnxruntime's (and C's) outputs equal PyTorch's within this, relative to the largest |output|.
RTOL = 1e-4
MANIFEST_KEY = "slimtune"
C_MANIFEST = "slimtune.json"


def raw_probe(manifest: dict[str, Any], n: int = 16) -> np.ndarray:
    """Seeded rows of raw features: standard normal in the model's input space, mapped back
    through the preprocessing (what a user would feed the export)."""
    shape = manifest["model"]["input_shape"]
    pre = manifest["preprocess"]
    x = np.random.default_rng(0).standard_normal((n, *shape))
    mean = np.asarray(pre["x_mean"], np.float64).reshape(-1)
    std = np.asarray(pre["x_std"], np.float64).reshape(-1)
    flat = x.reshape(n, -1) * std + mean
    return flat.reshape(n, *shape).astype(np.float32)


def torch_outputs(model, manifest: dict[str, Any], raw: np.ndarray) -> np.ndarray:
    """What the PyTorch model gives for raw features (preprocessed as in training), in the
    target's units for regression."""
    import torch

    pre = manifest["preprocess"]
    n = len(raw)
    mean = np.asarray(pre["x_mean"], np.float64).reshape(-1)
    std = np.asarray(pre["x_std"], np.float64).reshape(-1)
    x = ((raw.reshape(n, -1).astype(np.float64) - mean) / std).reshape(raw.shape).astype(np.float32)
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(x)).numpy().astype(np.float64)
    if manifest["model"]["kind"] == "regression":
        out = out * float(pre.get("y_std") or 1.0) + float(pre.get("y_mean") or 0.0)
    return out


def _check(got: np.ndarray, want: np.ndarray, what: str) -> float:
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    if not diff <= RTOL * scale:
        raise RuntimeError(f"the {what} export disagrees with PyTorch: max |output difference| {diff:.3g} > "
                           f"{RTOL} x {scale:.3g}")
    return diff


def graph_for(model, manifest: dict[str, Any], fmt: str):
    """:func:`deploy.graph_of` for an export; a model it cannot express is one line (exit 2)."""
    try:
        return deploy.graph_of(model, manifest["model"]["input_shape"], manifest["preprocess"],
                               manifest["model"]["kind"])
    except deploy.Unsupported as exc:
        hint = "use --dense (dense fp32 ONNX of any model)" if fmt == "onnx" else "see the supported layers in the docs"
        raise SpecError("model", f"every layer must be supported by the {fmt} export", str(exc), hint) from None


def write_onnx(model, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """The compressed ONNX file at ``out`` and its manifest at ``<out>.json``."""
    import onnxruntime as ort

    graph = graph_for(model, manifest, "onnx")
    blob = deploy.onnx_bytes(graph)
    raw = raw_probe(manifest)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    diff = _check(sess.run(None, {"x": raw})[0], torch_outputs(model, manifest, raw), "ONNX")
    manifest = {**manifest, "raw_input": True, "onnx_bytes": len(blob),
                "check": {"onnxruntime_max_abs_diff": diff, "tolerance": f"{RTOL} x max(1, max |output|)",
                          "inputs": f"{len(raw)} seeded rows"}}
    write_atomic(out, blob)
    write_atomic(out.with_name(out.name + ".json"), json.dumps(manifest, indent=2).encode())
    return manifest


def write_dense_onnx(model, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """``torch.onnx.export`` of the dense fp32 model with the preprocessing in front (raw
    features in), the manifest in ``metadata_props["slimtune"]``."""
    import onnx
    import onnxruntime as ort
    import torch

    wrapped = _raw_module(model, manifest)
    shape = manifest["model"]["input_shape"]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (torch.zeros(1, *shape),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    raw = raw_probe(manifest)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    diff = _check(sess.run(None, {"x": raw})[0], torch_outputs(model, manifest, raw), "ONNX")
    manifest = {**manifest, "raw_input": True,
                "check": {"onnxruntime_max_abs_diff": diff, "tolerance": f"{RTOL} x max(1, max |output|)",
                          "inputs": f"{len(raw)} seeded rows"}}
    props = {MANIFEST_KEY: json.dumps(manifest)}
    if manifest["preprocess"].get("classes") is not None and manifest["model"]["kind"] == "classification":
        props["classes"] = json.dumps(list(manifest["preprocess"]["classes"]), separators=(",", ":"))
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(out, proto.SerializeToString())
    return manifest


def _raw_module(model, manifest: dict[str, Any]):
    """``model`` with the training preprocessing (and, for regression, the target's scaling)
    around it, so the dense export takes raw features too."""
    if True:  # one indented body, torch imported lazily
        import torch

        pre = manifest["preprocess"]
        shape = manifest["model"]["input_shape"]

        def stat(v):
            a = np.asarray(v, np.float32)
            return torch.from_numpy(a.reshape(shape) if a.size > 1 else a.reshape(()))

        class Raw(torch.nn.Module):  # noqa: B903
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                self.register_buffer("mean", stat(pre["x_mean"]))
                self.register_buffer("std", stat(pre["x_std"]))
                regression = manifest["model"]["kind"] == "regression"
                self.ys = float(pre.get("y_std") or 1.0) if regression else 1.0
                self.ym = float(pre.get("y_mean") or 0.0) if regression else 0.0

            def forward(self, x):
                y = self.model((x - self.mean) / self.std)
                return y * self.ys + self.ym if (self.ys, self.ym) != (1.0, 0.0) else y

        return Raw().eval()


def write_c_folder(model, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """``model.h``, ``model.c`` and ``slimtune.json`` in the folder ``out``; with a C compiler
    here, compiled (:data:`deploy.CFLAGS`), measured and checked against PyTorch."""
    if out.exists() and not out.is_dir():
        raise SpecError("out", "must be a folder for the C export (model.h and model.c go in it)", str(out))
    graph = graph_for(model, manifest, "c")
    out.mkdir(parents=True, exist_ok=True)
    src = deploy.write_c(graph, out)
    info: dict[str, Any] = {"arena_bytes": 4 * src.arena_floats, "row_bytes": 4 * src.row_floats}
    if deploy.find_compiler() is not None:
        fp = deploy.footprint(out)
        raw = raw_probe(manifest)
        diff = _check(deploy.run_export(out, raw), torch_outputs(model, manifest, raw), "C")
        info.update(flash_bytes=fp.flash_bytes, ram_bytes=fp.ram_bytes, stack_bytes=fp.stack_bytes,
                    sections=fp.sections, compiler=str(deploy.find_compiler()), cflags=list(deploy.CFLAGS),
                    check={"max_abs_diff": diff, "inputs": f"{len(raw)} seeded rows"})
    else:
        info["note"] = "no C compiler here: not compiled or measured"
    manifest = {**manifest, "raw_input": True, "c": info}
    write_atomic(out / C_MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest
