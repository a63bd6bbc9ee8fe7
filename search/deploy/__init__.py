"""Deployable forms of a compressed model that keep its compression (torch, onnx; no Ray).

:func:`graph_of` traces the model once into a :class:`Graph` (BatchNorm folded, weights as
their codes); :func:`onnx_bytes` writes it as ONNX (integer codes dequantized by
``DequantizeLinear``, runs in stock onnxruntime) and :func:`write_c` as C99 source for
microcontrollers (``model.h``/``model.c``), whose :func:`footprint` in flash and RAM the system
C compiler measures. :func:`deployed_sizes` gives the ``onnx_bytes``/``flash_bytes``/``ram_bytes``
metrics a trial reports.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

#: The metrics measured from a real export (spaces.METRIC_TABLE declares them).
DEPLOY_METRICS = ("onnx_bytes", "flash_bytes", "ram_bytes")
#: Those that need the C compiler.
C_METRICS = ("flash_bytes", "ram_bytes")

#: Loaded on first use (PEP 562), so naming the metrics (a trial, the driver) loads neither onnx nor fx.
_HOME = {"CFLAGS": "c_build", "Footprint": "c_build", "NoCompiler": "c_build", "find_compiler": "c_build",
         "footprint": "c_build", "run_export": "c_build", "CSource": "c_source",
         "LAYERS": "graph", "Graph": "graph", "Unsupported": "graph", "graph_of": "graph",
         "onnx_bytes": "onnx_graph", "onnx_model": "onnx_graph"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wanted(names) -> tuple[str, ...]:
    """The deployment metrics among ``names`` (a spec's objectives and constraints); flash and RAM
    come from one compile, so both or neither."""
    named = set(names)
    if named & set(C_METRICS):
        named |= set(C_METRICS)
    return tuple(m for m in DEPLOY_METRICS if m in named)

__all__ = ["CFLAGS", "C_METRICS", "CSource", "DEPLOY_METRICS", "Footprint", "Graph", "LAYERS", "NoCompiler",
           "Unsupported", "deployed_sizes", "find_compiler", "footprint", "graph_of", "onnx_bytes",
           "onnx_model", "run_export", "wanted", "write_c"]


def write_c(graph, folder: str | Path):
    """Write ``model.h`` and ``model.c`` of ``graph`` into ``folder`` (created)."""
    from .c_source import c_source

    src = c_source(graph)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.h").write_text(src.header)
    (folder / "model.c").write_text(src.source)
    return src


def deployed_sizes(model, input_shape, preprocess: dict[str, Any] | None, kind: str,
                   metrics: tuple[str, ...] | list[str]) -> dict[str, int]:
    """The deployment metrics in ``metrics`` for ``model``: ``onnx_bytes`` (the compressed ONNX
    file's length), ``flash_bytes`` and ``ram_bytes`` (its C export compiled here)."""
    from .c_build import footprint
    from .graph import graph_of
    from .onnx_graph import onnx_bytes

    graph = graph_of(model, input_shape, preprocess, kind)
    out: dict[str, int] = {}
    if "onnx_bytes" in metrics:
        out["onnx_bytes"] = len(onnx_bytes(graph))
    if any(m in metrics for m in C_METRICS):
        with tempfile.TemporaryDirectory(prefix="slimtune-c-") as tmp:
            write_c(graph, tmp)
            fp = footprint(tmp)
        out.update(flash_bytes=fp.flash_bytes, ram_bytes=fp.ram_bytes)
    return out
