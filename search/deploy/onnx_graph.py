"""The compressed ONNX file of a :class:`~.graph.Graph`: weights as their integer codes.

Each quantized weight is an initializer of ONNX's own integer type (UINT2 for 2 bits, UINT4 up
to 4, UINT8 up to 8), packed in ``raw_data``, dequantized by ``DequantizeLinear`` with its scale
and zero point (per output channel on axis 0, or one per tensor). A pruned weight whose zeros
make it shorter is stored as its non-zero codes plus a 1-bit mask, expanded to the dense codes by
the model-local function ``s.E`` (a dozen standard ops over initializers only, which onnxruntime
folds into a constant once, when the session is created). BatchNorm is folded (:mod:`.graph`),
names are one or two characters, the training preprocessing is the graph's first ops and, for
regression, the target's scaling its last. Metadata: ``classes`` (classification), the label of
each output as a JSON list. Opset 21 (25 when a layer has 2-bit codes).
"""

from __future__ import annotations

import itertools
import json
import string

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import Graph, Op
from .onnx_weights import DOMAIN, FUNCTIONS, Encoder

OPSET, OPSET_2BIT = 21, 25


def onnx_model(graph: Graph, *, sparse: bool = True, unpack: bool = True, halves: bool = True) -> onnx.ModelProto:
    """The ONNX model of ``graph``. ``sparse``: pruned weights may be stored as their non-zero
    codes and where they are; ``unpack``: codes, masks and gaps may be stored at their exact width
    (the function ``s.U`` unpacks them); ``halves``: biases and scales that are float16 values are
    stored so. Each weight takes the shortest layout these allow (:mod:`.onnx_weights`)."""
    return _Writer(graph, sparse=sparse, unpack=unpack, halves=halves).model()


def onnx_bytes(graph: Graph) -> bytes:
    """The shortest compressed ONNX file of ``graph``: every combination of the options of
    :func:`onnx_model` is written (each in milliseconds) and the shortest kept, so a function
    body or the float16 block is in the file only where it pays for itself."""
    blobs = [onnx_model(graph, sparse=a, unpack=b, halves=c).SerializeToString()
             for a, b, c in itertools.product((True, False), repeat=3)]
    return min(blobs, key=len)


def _short_names():
    letters = string.ascii_letters
    for n in itertools.count(1):
        for combo in itertools.product(letters, repeat=n):
            name = "".join(combo)
            if name not in ("x", "y"):
                yield name


class _Writer:
    def __init__(self, graph: Graph, *, sparse: bool, unpack: bool, halves: bool) -> None:
        self.g, self.halving = graph, halves
        self.enc = Encoder(self, sparse=sparse, unpack=unpack)
        self.used: set[str] = set()
        self.zeros8: dict[int, str] = {}
        self.native_inputs: set[str] = set()
        self.sparse: list = []
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.names = _short_names()
        self.consts: dict[tuple, str] = {}
        self.values = {"x": "x"}
        self.halves: list[tuple[str, np.ndarray]] = []
        self.opset = OPSET_2BIT if any(op.weight is not None and op.weight.bits <= 2 for op in graph.ops) else OPSET

    # -------------------------------------------------------------- plumbing

    def name(self) -> str:
        return next(self.names)

    def node(self, op_type: str, inputs: list[str], domain: str = "", **attrs) -> str:
        out = self.name()
        self.nodes.append(helper.make_node(op_type, inputs, [out], domain=domain or None, **attrs))
        return out

    def init(self, dtype: int, dims: tuple[int, ...], raw: bytes) -> str:
        name = self.name()
        self.inits.append(helper.make_tensor(name, dtype, list(dims), vals=raw, raw=True))
        return name

    def floats(self, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr, dtype="<f4")
        return self.init(TensorProto.FLOAT, arr.shape, arr.tobytes())

    def const(self, values: tuple, dtype: int = TensorProto.INT64) -> str:
        """A small constant shared by every node that needs it."""
        key = (values, dtype)
        if key not in self.consts:
            arr = np.asarray(values, dtype="<i8" if dtype == TensorProto.INT64 else "<f4")
            self.consts[key] = self.init(dtype, arr.shape, arr.tobytes())
        return self.consts[key]

    # -------------------------------------------------------------- weights

    def scalar(self, v: int) -> str:
        """A shared int64 scalar."""
        key = ("scalar", v)
        if key not in self.consts:
            self.consts[key] = self.init(TensorProto.INT64, (), np.asarray(v, "<i8").tobytes())
        return self.consts[key]

    def vector(self, arr: np.ndarray) -> str:
        """A bias or scale: float16 in the model's one half-precision initializer when every value
        is a float16 (compress rounds them so by default), else float32."""
        arr = np.asarray(arr, dtype=np.float32)
        if self.halving and arr.ndim == 1 and arr.size > 1 and np.all(np.isfinite(arr)) and np.array_equal(
                arr.astype(np.float16).astype(np.float32), arr):
            name = self.name()
            self.halves.append((name, arr.astype("<f2")))
            return name
        return self.floats(arr)

    # -------------------------------------------------------------- ops

    def op(self, op: Op) -> str:
        x = [self.values[i] for i in op.inputs]
        a = op.attrs
        if op.kind == "linear":
            w = self.enc.weight(op.weight)  # [out, in]
            b = [self.vector(op.bias)] if op.bias is not None else []
            if len(self.g.value_shapes()[op.inputs[0]]) == 1:
                return self.node("Gemm", [x[0], w, *b], transB=1)
            y = self.node("MatMul", [x[0], self.node("Transpose", [w])])
            return self.node("Add", [y, b[0]]) if b else y
        if op.kind == "conv":
            w = self.enc.weight(op.weight)
            b = [self.vector(op.bias)] if op.bias is not None else []
            attrs = {k: list(v) for k, v in (("strides", a["stride"]), ("pads", a["pads"]),
                                                ("dilations", a["dilation"])) if any(e != 1 for e in v)
                     or (k == "pads" and any(v))}
            if "pads" in attrs and not any(a["pads"]):
                del attrs["pads"]
            if a["groups"] != 1:
                attrs["group"] = a["groups"]
            return self.node("Conv", [x[0], w, *b], **attrs)
        if op.kind == "act":
            return self.act(x[0], a)
        if op.kind == "add":
            return self.node("Add", x)
        if op.kind == "reshape":
            if op.shape == self.g.value_shapes()[op.inputs[0]]:
                return x[0]
            if len(op.shape) == 1:
                return self.node("Flatten", x)
            return self.node("Reshape", [x[0], self.const((-1, *op.shape))])
        if op.kind == "pool":
            attrs = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"])}
            if any(a["pads"]):
                attrs["pads"] = list(a["pads"])
                if a["mode"] == "avg" and a["include_pad"]:
                    attrs["count_include_pad"] = 1
            return self.node("MaxPool" if a["mode"] == "max" else "AveragePool", x, **attrs)
        if op.kind == "gap":
            y = self.node("GlobalAveragePool", x)
            return self.node("Flatten", [y]) if a.get("squeeze") else y
        if op.kind == "affine":
            view = (-1,) + (1,) * (len(op.shape) - 1)
            y = self.node("Mul", [x[0], self.floats(a["gain"].reshape(view))])
            return self.node("Add", [y, self.floats(a["shift"].reshape(view))])
        raise AssertionError(op.kind)

    def act(self, x: str, a: dict) -> str:
        fn = a["fn"]
        if fn == "relu":
            return self.node("Relu", [x])
        if fn == "sigmoid":
            return self.node("Sigmoid", [x])
        if fn == "tanh":
            return self.node("Tanh", [x])
        if fn == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if fn == "leaky_relu":
            return self.node("LeakyRelu", [x], alpha=a["alpha"])
        if fn == "gelu":
            return self.node("Gelu", [x], approximate=a["approximate"])
        if fn == "scale":
            return self.node("Mul", [x, self.floats(np.float32(a["factor"]).reshape(()))])
        if fn == "hardtanh":
            lo, hi = (self.floats(np.float32(v).reshape(())) for v in (a["min"], a["max"]))
            return self.node("Clip", [x, lo, hi])
        raise AssertionError(fn)

    # -------------------------------------------------------------- model

    def model(self) -> onnx.ModelProto:
        g = self.g
        v = "x"
        if g.x_mean is not None:
            v = self.node("Sub", [v, self.floats(g.x_mean)])
        if g.x_std is not None:
            v = self.node("Div", [v, self.floats(g.x_std)])
        self.values["x"] = v
        for op in g.ops:
            self.values[op.output] = self.op(op)
        y = self.values[g.output]
        if self.halves:  # one float16 initializer, cast once and split into the biases and scales
            half = np.concatenate([a for _, a in self.halves])
            h = self.init(TensorProto.FLOAT16, half.shape, half.tobytes())
            f = self.name()
            sizes = self.const(tuple(len(a) for _, a in self.halves))
            self.nodes[:0] = [helper.make_node("Cast", [h], [f], to=TensorProto.FLOAT),
                              helper.make_node("Split", [f, sizes], [n for n, _ in self.halves])]
        if g.y_std is not None:
            y = self.node("Mul", [y, self.floats(np.float32(g.y_std).reshape(()))])
        if g.y_mean is not None:
            y = self.node("Add", [y, self.floats(np.float32(g.y_mean).reshape(()))])
        if y == "x" or not self.nodes or self.nodes[-1].output[0] != y:
            y = self.node("Identity", [y])
        self.nodes[-1].output[0] = "y"
        n_out = int(np.prod(g.value_shapes()[g.output]))
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *g.input_shape])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])], self.inits,
            sparse_initializer=self.sparse)
        opsets = [helper.make_opsetid("", self.opset)]
        functions = [FUNCTIONS[f](self.opset) for f in sorted(self.used)]
        if functions:
            opsets.append(helper.make_opsetid(DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, functions=functions,
                                  ir_version=11 if self.opset >= OPSET_2BIT else 10)
        if g.kind == "classification" and g.classes is not None:
            helper.set_model_props(model, {"classes": json.dumps(list(g.classes), separators=(",", ":"))})
        return model
