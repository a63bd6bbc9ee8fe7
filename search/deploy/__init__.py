"""Deployable forms of a compressed model that keep its compression (torch, onnx; no Ray).

:func:`graph_of` traces the model once into a :class:`Graph` (BatchNorm folded, weights as
their codes); :func:`onnx_bytes` writes it as ONNX (integer codes dequantized by
``DequantizeLinear``, runs in stock onnxruntime) and :func:`write_c` as C99 source for
microcontrollers (``model.h``/``model.c``), whose :func:`footprint` in flash and RAM the system
C compiler measures. :func:`deployed_sizes` gives the ``onnx_bytes``/``flash_bytes``/``ram_bytes``
metrics a trial reports.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .c_build import CFLAGS, Footprint, NoCompiler, find_compiler, footprint, run_export
from .c_source import CSource, c_source
from .graph import LAYERS, Graph, Unsupported, graph_of
from .onnx_graph import onnx_bytes, onnx_model

#: The metrics measured from a real export (spaces.METRIC_TABLE declares them).
DEPLOY_METRICS = ("onnx_bytes", "flash_bytes", "ram_bytes")
#: Those that need the C compiler.
C_METRICS = ("flash_bytes", "ram_bytes")

__all__ = ["CFLAGS", "C_METRICS", "CSource", "DEPLOY_METRICS", "Footprint", "Graph", "LAYERS", "NoCompiler",
           "Unsupported", "c_source", "deployed_sizes", "find_compiler", "footprint", "graph_of", "onnx_bytes",
           "onnx_model", "run_export", "write_c"]


def write_c(graph: Graph, folder: str | Path) -> CSource:
    """Write ``model.h`` and ``model.c`` of ``graph`` into ``folder`` (created)."""
    src = c_source(graph)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.h").write_text(src.header)
    (folder / "model.c").write_text(src.source)
    return src


def deployed_sizes(model, input_shape, preprocess: dict[str, Any] | None, kind: str,
                   wanted: tuple[str, ...] | list[str]) -> dict[str, int]:
    """The deployment metrics in ``wanted`` for ``model``: ``onnx_bytes`` (the compressed ONNX
    file's length), ``flash_bytes`` and ``ram_bytes`` (its C export compiled here)."""
    graph = graph_of(model, input_shape, preprocess, kind)
    out: dict[str, int] = {}
    if "onnx_bytes" in wanted:
        out["onnx_bytes"] = len(onnx_bytes(graph))
    if any(m in wanted for m in C_METRICS):
        with tempfile.TemporaryDirectory(prefix="slimtune-c-") as tmp:
            write_c(graph, tmp)
            fp = footprint(tmp)
        out.update(flash_bytes=fp.flash_bytes, ram_bytes=fp.ram_bytes)
    return out
