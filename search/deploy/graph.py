"""A compressed model as a deployable graph: traced once, BatchNorm folded, weights as their codes.

Both compressed exports (ONNX: :mod:`.onnx_graph`, C: :mod:`.c_source`) are written from this one
description, so they compute the same thing. :func:`graph_of` traces the model with ``torch.fx``
(public API), records each value's shape with an ``fx.Interpreter`` run, and translates each node
into an :class:`Op` of a small vocabulary (:data:`LAYERS` lists what it covers). A layer outside it
is one :class:`Unsupported` line naming the layer. Weights are :class:`Weight`: the k-bit codes
with per-channel (or per-tensor) scale and zero point that ``compress`` stored, or float32.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimtune import compress

from .layer_attrs import Unsupported, bn_attrs, conv_attrs, pool_attrs

#: What the graph covers, by kind of op (the docs' table of supported layers comes from here).
LAYERS = {
    "linear": "nn.Linear",
    "conv": "nn.Conv1d, nn.Conv2d (zero padding, any stride, dilation, groups)",
    "bn": "nn.BatchNorm1d/2d in eval mode: folded into the Linear/Conv before it, else a per-channel affine",
    "act": "ReLU, ReLU6, Hardtanh, LeakyReLU, Sigmoid, Tanh, SiLU, GELU (modules, torch.* and F.* forms)",
    "pool": "nn.MaxPool1d/2d, nn.AvgPool1d/2d (no ceil_mode), AdaptiveAvgPool1d/2d(1), mean over the spatial dims",
    "add": "residual add of two tensors of one shape (x + y, torch.add); a tensor times or over a number",
    "reshape": "Flatten, Unflatten, view, reshape, flatten (the batch dimension kept)",
    "skip": "Identity, Dropout (no-ops at inference)",
}


@dataclass(frozen=True)
class Weight:
    """A Linear/Conv weight as it is stored: ``values`` (float32) is what the model computes with;
    ``bits`` 2..8 with ``codes`` (uint8, ``values``' shape) so that ``(codes - zero) * scale`` is
    ``values`` per output channel (``scale``/``zero`` of length C, or 1 for one per tensor), or
    ``bits`` 32 (``codes`` None) for float32."""

    values: np.ndarray
    bits: int = 32
    codes: np.ndarray | None = None
    scale: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    zero: np.ndarray = field(default_factory=lambda: np.zeros(1, np.uint8))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def mask(self) -> np.ndarray:
        """True where the weight is not zero (pruned weights are exactly zero)."""
        return self.values != 0

    def folded(self, gain: np.ndarray) -> Weight:
        """This weight with output channel c multiplied by ``gain[c]`` (BatchNorm folding): the
        codes stay, the scale absorbs ``|gain|``, a negative gain mirrors the channel's codes."""
        view = (-1,) + (1,) * (self.values.ndim - 1)
        if self.codes is None:
            return Weight((self.values * gain.reshape(view)).astype(np.float32))
        qmax = 2**self.bits - 1
        n = self.values.shape[0]
        scale = np.broadcast_to(self.scale, (n,)).astype(np.float32) * np.abs(gain).astype(np.float32)
        zero = np.broadcast_to(self.zero, (n,)).astype(np.int64)
        flip = gain < 0
        codes = np.where(flip.reshape(view), qmax - self.codes.astype(np.int64), self.codes).astype(np.uint8)
        zero = np.where(flip, qmax - zero, zero).astype(np.uint8)
        values = ((codes.astype(np.float32) - zero.reshape(view).astype(np.float32)) * scale.reshape(view))
        return Weight(values.astype(np.float32), self.bits, codes, scale.astype(np.float32), zero)


@dataclass
class Op:
    """One step of the graph: ``kind`` (see :data:`LAYERS`; ``act`` ops name their function in
    ``attrs["fn"]``), the values it reads and the one it writes, that value's shape per input row
    (no batch dimension), its attributes, and the weight and bias of a linear or conv."""

    kind: str
    inputs: list[str]
    output: str
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    weight: Weight | None = None
    bias: np.ndarray | None = None
    where: str = ""


@dataclass
class Graph:
    """The whole model: ``ops`` in order from the input value ``"x"`` to ``output``; the training
    preprocessing (``x_mean``/``x_std``: float32 scalars or one per feature in ``input_shape``)
    applied to the raw input first, and for regression ``y_mean``/``y_std`` to the output."""

    input_shape: tuple[int, ...]
    ops: list[Op]
    output: str
    kind: str = "classification"
    classes: list[Any] | None = None
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    y_mean: float | None = None
    y_std: float | None = None

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.value_shapes()[self.output]))

    def value_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"x": tuple(self.input_shape), **{op.output: op.shape for op in self.ops}}


def graph_of(model: nn.Module, input_shape: tuple[int, ...] | list[int], preprocess: dict[str, Any] | None = None,
             kind: str = "classification") -> Graph:
    """The deployable graph of ``model`` (in eval mode) on inputs of ``(batch, *input_shape)``;
    ``preprocess``: the manifest's ``preprocess`` (``x_mean``, ``x_std``, ``classes``, ``y_mean``,
    ``y_std``). Raises :class:`Unsupported` for a layer it does not cover."""
    shape = tuple(int(s) for s in input_shape)
    ops, out = _trace(model.eval(), shape)
    pre = preprocess or {}
    ops, out = _fold_batchnorm(ops, out)
    graph = Graph(shape, ops, out, kind, pre.get("classes"))
    graph.x_mean, graph.x_std = _stat(pre.get("x_mean"), shape, 0.0), _stat(pre.get("x_std"), shape, 1.0)
    if kind == "regression":
        graph.y_mean = None if pre.get("y_mean") in (None, 0.0) else float(pre["y_mean"])
        graph.y_std = None if pre.get("y_std") in (None, 1.0) else float(pre["y_std"])
    return graph


def _stat(value: Any, shape: tuple[int, ...], neutral: float) -> np.ndarray | None:
    """A preprocessing statistic as float32 (a scalar, or ``shape``); None when it changes nothing."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.size > 1:
        return arr.reshape(shape)
    return None if float(arr.reshape(-1)[0]) == neutral else arr.reshape(())


# ------------------------------------------------------------------ tracing


class _Recorder(fx.Interpreter):
    """Runs the traced model once, keeping every node's result (the shapes come from it)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.seen: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        self.seen[n] = result = super().run_node(n)
        return result


BATCH = 2  # rows of the probe that records the shapes (2, so a reshape that merges rows shows)


def _trace(model: nn.Module, shape: tuple[int, ...]) -> tuple[list[Op], str]:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, ... for data-dependent control flow
        raise Unsupported(type(model).__name__, f"cannot be traced by torch.fx ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:160]})") from None
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(torch.zeros(BATCH, *shape))
    modules = dict(gm.named_modules())
    names: dict[fx.Node, str] = {}
    ops: list[Op] = []
    shapes: dict[str, tuple[int, ...]] = {"x": shape}
    out = "x"
    for node in gm.graph.nodes:
        value = rec.seen.get(node)
        if node.op == "placeholder":
            names[node] = "x"
        elif node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node) or arg not in names:
                raise Unsupported("output", "the model must return one tensor")
            out = names[arg]
        elif not isinstance(value, torch.Tensor):
            if node.op == "call_module":
                raise Unsupported(_label(node, modules), "this layer is not supported by the compressed exports")
            continue  # x.size(0), x.shape: only read by reshapes, whose result shape is recorded
        else:
            op = _translate(node, modules, names, value, shapes)
            if op is None:  # a no-op: the value is its input
                names[node] = names[_tensor_args(node, names)[0]]
            else:
                names[node] = op.output
                shapes[op.output] = op.shape
                ops.append(op)
    return ops, out


def _tensor_args(node: fx.Node, names: dict[fx.Node, str]) -> list[fx.Node]:
    return [a for a in node.args if isinstance(a, fx.Node) and a in names]


def _label(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.name} ({target})"


def _translate(node: fx.Node, modules: dict[str, nn.Module], names: dict[fx.Node, str],
               value: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> Op | None:
    where = _label(node, modules)
    if value.dim() == 0 or value.shape[0] != BATCH:
        raise Unsupported(where, "must keep the batch dimension first")
    ins = [names[a] for a in _tensor_args(node, names)]
    shape = tuple(int(s) for s in value.shape[1:])
    if node.op == "call_module":
        spec = _module_op(modules[node.target], where)
    else:
        spec = _function_op(node, where)
    if spec is None:
        return None
    kind, attrs, weight, bias = spec
    if kind == "gap":
        before = shapes[ins[0]]
        if len(before) < 2 or shape not in ((before[0],), (before[0],) + (1,) * (len(before) - 1)):
            raise Unsupported(where, "a mean must be over all spatial dimensions (global average pooling)")
        attrs = {"squeeze": len(shape) == 1}
    if kind == "add" and len(ins) != 2:
        raise Unsupported(where, "an add must be of two tensors of one shape (a constant is not supported)")
    return Op(kind, ins[:2] if kind == "add" else ins[:1], node.name, shape, attrs, weight, bias, where)


def _weight_of(module: nn.Module) -> Weight:
    got = compress.weight_codes(module)
    values = module.weight.detach().float().cpu().numpy().astype(np.float32)
    if got is None:
        return Weight(values)
    codes, qp = got
    return Weight(values, qp.bits, codes.numpy().astype(np.uint8), qp.scale.reshape(-1).numpy().astype(np.float32),
                  qp.zero_point.reshape(-1).numpy().astype(np.uint8))


def _bias_of(module: nn.Module) -> np.ndarray | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach().float().cpu().numpy().astype(np.float32)


_ACT_MODULES = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu"}
_ACT_FUNCTIONS = {torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
                  torch.tanh: "tanh", F.tanh: "tanh", F.silu: "silu", F.relu6: "relu6", F.gelu: "gelu",
                  F.leaky_relu: "leaky_relu", F.hardtanh: "hardtanh"}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}


def _module_op(m: nn.Module, where: str) -> tuple | None:
    if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)):
        return None
    if isinstance(m, nn.Linear):
        return "linear", {}, _weight_of(m), _bias_of(m)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return "conv", conv_attrs(m, where), _weight_of(m), _bias_of(m)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "bn", bn_attrs(m, where), None, None
    for cls, fn in _ACT_MODULES.items():
        if type(m) is cls:
            return "act", {"fn": fn}, None, None
    if isinstance(m, nn.ReLU6):
        return "act", {"fn": "hardtanh", "min": 0.0, "max": 6.0}, None, None
    if isinstance(m, nn.Hardtanh):
        return "act", {"fn": "hardtanh", "min": float(m.min_val), "max": float(m.max_val)}, None, None
    if isinstance(m, nn.LeakyReLU):
        return "act", {"fn": "leaky_relu", "alpha": float(m.negative_slope)}, None, None
    if isinstance(m, nn.GELU):
        return "act", {"fn": "gelu", "approximate": m.approximate}, None, None
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return "reshape", {}, None, None
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
        return "pool", pool_attrs(m, where), None, None
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
        if any(s != 1 for s in size):
            raise Unsupported(where, f"only output_size 1 (global average pooling) is supported, got {m.output_size}")
        return "gap", {}, None, None
    raise Unsupported(where, "this layer is not supported by the compressed exports")


def _function_op(node: fx.Node, where: str) -> tuple | None:
    target, kw = node.target, dict(node.kwargs)
    if node.op == "call_method":
        if target in _RESHAPE_METHODS:
            return "reshape", {}, None, None
        if target in _ACT_METHODS:
            return "act", {"fn": _ACT_METHODS[target]}, None, None
        if target == "add":
            return "add", {}, None, None
        if target == "mean":
            return "gap", {"squeeze": not kw.get("keepdim", False)}, None, None
        raise Unsupported(where, f"the tensor method .{target}() is not supported by the compressed exports")
    if target in (operator.add, torch.add):
        return "add", {}, None, None
    if target in (operator.mul, torch.mul, operator.truediv, torch.div):
        numbers = [a for a in node.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if len(numbers) != 1 or len(node.args) != 2 or (target in (operator.truediv, torch.div)
                                                          and not isinstance(node.args[0], fx.Node)):
            raise Unsupported(where, "only a product (or quotient) of a tensor and a number is supported")
        factor = float(numbers[0]) if target in (operator.mul, torch.mul) else 1.0 / float(numbers[0])
        return "act", {"fn": "scale", "factor": factor}, None, None
    if target in _RESHAPE_FUNCTIONS:
        return "reshape", {}, None, None
    if target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.mean):
        return "gap", {"squeeze": target is torch.mean and not kw.get("keepdim", False)}, None, None
    fn = _ACT_FUNCTIONS.get(target)
    if fn is None:
        raise Unsupported(where, "this function is not supported by the compressed exports")
    args = list(node.args[1:])
    attrs: dict[str, Any] = {"fn": fn}
    if fn == "relu6":
        attrs = {"fn": "hardtanh", "min": 0.0, "max": 6.0}
    elif fn == "hardtanh":
        attrs.update(min=float(kw.get("min_val", args[0] if args else -1.0)),
                     max=float(kw.get("max_val", args[1] if len(args) > 1 else 1.0)))
    elif fn == "leaky_relu":
        attrs["alpha"] = float(kw.get("negative_slope", args[0] if args else 0.01))
    elif fn == "gelu":
        attrs["approximate"] = str(kw.get("approximate", "none"))
    return "act", attrs, None, None


def _fold_batchnorm(ops: list[Op], result: str) -> tuple[list[Op], str]:
    """Each BatchNorm right after the Linear/Conv whose output only it reads is folded into that
    layer's scale and bias; any other becomes a per-channel affine (``gain``, ``shift``)."""
    readers: dict[str, int] = {}
    for op in ops:
        for name in op.inputs:
            readers[name] = readers.get(name, 0) + 1
    by_output = {op.output: op for op in ops}
    out: list[Op] = []
    rename: dict[str, str] = {}
    for op in ops:
        op.inputs = [rename.get(n, n) for n in op.inputs]
        src = by_output.get(op.inputs[0]) if op.kind == "bn" else None
        if op.kind == "bn" and src is not None and src.kind in ("linear", "conv") and readers[src.output] == 1:
            g, t = op.attrs["gain"], op.attrs["shift"]
            bias = src.bias if src.bias is not None else np.zeros_like(t)
            folded = replace(src, weight=src.weight.folded(g), bias=(bias * g + t).astype(np.float32))
            out[out.index(src)] = folded
            by_output[src.output] = folded
            rename[op.output] = src.output
            continue
        if op.kind == "bn":
            op = replace(op, kind="affine")
        out.append(op)
    return out, rename.get(result, result)
