"""How the compressed ONNX file stores one Linear/Conv weight: the shortest of a few layouts.

A quantized weight always reaches its layer through ``DequantizeLinear`` (scale and zero point
per output channel, or one per tensor). What feeds it is one of:

* ``dense``:  every code, in ONNX's own type (UINT2, UINT4 or UINT8, packed in ``raw_data``);
* ``packed``: every code at its exact width (e.g. 5 or 6 bits) in one byte string, unpacked by
  the model-local function ``s.U``;
* ``sparse``: only the stored elements (the non-zero codes) and where they are: a 1-bit mask
  (unpacked by ``s.U``, expanded by ``s.M``) or the gaps between them (``s.G``; a gap longer than
  its width allows gets a filler element holding the channel's zero point, expanded by ``s.E``),
  every other element at its channel's zero point.

Every function works on initializers only, so onnxruntime folds it into a constant when the
session is created. A float32 weight (not quantized) takes the same layouts with float values.
For the sparse and packed layouts the weight is laid out with the output channel last
(``[fan-in, channels]``: what ``Gemm`` reads untransposed, and what lets a per-channel fill
broadcast); a conv's is transposed and reshaped back before its ``DequantizeLinear``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import FunctionProto, TensorProto, helper

from .graph import Weight
from .packing import gap_stream, pack_bits

DOMAIN = "s"
TYPES = {2: TensorProto.UINT2, 4: TensorProto.UINT4, 8: TensorProto.UINT8}
HEADER = 10  # bytes an initializer costs besides its data (name, type, dims)
NODE = 22    # bytes a node costs, about


def storage_bits(bits: int) -> int:
    """The width ONNX's own types store a ``bits``-bit code in: 2, 4 or 8 (32: float32)."""
    return 32 if bits == 32 else next(w for w in (2, 4, 8) if bits <= w)


@dataclass(frozen=True)
class Layout:
    """One way of storing a weight: ``kind`` dense | packed | sparse | coo (a sparse initializer); for sparse, ``where``
    (``mask`` or ``gaps`` with ``gap_bits`` and ``gap_packed``) and ``positions`` of the stored
    elements in the channel-last flat order; ``value_bits`` (their width) and ``value_packed``."""

    kind: str
    cost: int
    positions: np.ndarray | None = None
    gaps: np.ndarray | None = None
    gap_bits: int = 0
    gap_packed: bool = False
    value_bits: int = 8
    value_packed: bool = False


def channel_last(w: Weight) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(values, codes with zeros at their channel's zero point, mask), each ``[fan-in, C]``."""
    c = w.shape[0]
    values = w.values.reshape(c, -1).T
    mask = values != 0
    if w.codes is None:
        return values, None, mask
    zero = np.broadcast_to(w.zero if w.zero.size > 1 else w.zero.reshape(()), (c,))
    codes = np.where(mask, w.codes.reshape(c, -1).T, zero[None, :])
    return values, codes, mask


def choose(w: Weight, *, sparse: bool, unpack: bool) -> Layout:
    """The layout of ``w`` with the fewest bytes, from those the file may use."""
    n, k = w.values.size, w.bits
    tb = storage_bits(k)
    vbits = [(tb, False)] + ([(k, True)] if unpack and k not in (8, 32) and k != tb else [])
    options = [Layout("dense", (n * tb + 7) // 8 + HEADER)]
    if unpack and k != 32 and k != tb:
        options.append(Layout("packed", (n * k + 7) // 8 + 1 + 3 * HEADER + 2 * NODE + 8 * len(w.shape), value_bits=k,
                              value_packed=True))
    _, _, mask = channel_last(w)
    flat = mask.reshape(-1)
    if sparse and 0 < flat.sum() < n:
        fixed = 2 * HEADER + 2 * NODE + 16 + (NODE + HEADER + 8 * len(w.shape) if len(w.shape) > 2 else 0)
        where = []
        for gb in (1, 2, 3, 4, 5, 6, 7, 8):
            native = gb in (4, 8)  # UINT2 needs opset 25: a 2-bit gap stream is packed (s.U)
            if not (native or unpack):
                continue
            gaps, pos = gap_stream(flat, 2**gb - 1)
            where.append((gaps, pos, gb, not native, (len(gaps) * gb + 7) // 8 + HEADER + NODE + (
                HEADER + NODE if not native else 0)))
        if unpack:
            where.append((None, np.flatnonzero(flat), 1, True, (n + 7) // 8 + 1 + 2 * HEADER + 2 * NODE))
        for gaps, pos, gb, gpacked, pcost in where:
            for vb, vpacked in vbits:
                cost = fixed + pcost + (len(pos) * vb + 7) // 8 + (HEADER + NODE if vpacked or vb != 8 else 0)
                options.append(Layout("sparse", cost, pos, gaps, gb, gpacked, vb, vpacked))
    if sparse and 0 < flat.sum() < n and (w.codes is None or k <= 7):
        nnz = int(mask.sum())
        index = 2 if n <= 2**15 else 4
        options.append(Layout("coo", nnz * ((4 if w.codes is None else 1) + index) + 2 * HEADER + 8))
    return min(options, key=lambda o: o.cost)


def unpack_function(opset: int) -> FunctionProto:
    """``U(b, k, n)``: the first ``n`` values (uint8) of the ``k``-bit little-endian stream ``b``
    (one padding byte at its end)."""
    c = helper.make_node
    i64 = TensorProto.INT64
    nodes = [
        c("Constant", [], ["a"], value_int=0), c("Constant", [], ["o"], value_int=1),
        c("Constant", [], ["e"], value_int=8), c("Constant", [], ["t"], value_ints=[2**i for i in range(9)]),
        c("Range", ["a", "n", "o"], ["r"]),
        c("Mul", ["r", "k"], ["f"]),             # bit offset of each value
        c("Div", ["f", "e"], ["y"]), c("Mod", ["f", "e"], ["z"]),
        c("Cast", ["b"], ["c"], to=i64),
        c("Gather", ["c", "y"], ["l"]), c("Add", ["y", "o"], ["y1"]), c("Gather", ["c", "y1"], ["h"]),
        c("Gather", ["t", "e"], ["g"]), c("Mul", ["h", "g"], ["hh"]), c("Add", ["l", "hh"], ["w"]),
        c("Gather", ["t", "z"], ["p"]), c("Div", ["w", "p"], ["q"]),
        c("Gather", ["t", "k"], ["m"]), c("Mod", ["q", "m"], ["v"]),
        c("Cast", ["v"], ["u"], to=TensorProto.UINT8),
    ]
    return helper.make_function(DOMAIN, "U", ["b", "k", "n"], ["u"], nodes, [helper.make_opsetid("", opset)])


def gaps_function(opset: int) -> FunctionProto:
    """``G(e)``: positions ``cumsum(e)`` (int64) of a gap stream."""
    c = helper.make_node
    nodes = [c("Constant", [], ["a"], value_int=0), c("Cast", ["e"], ["i"], to=TensorProto.INT64),
             c("CumSum", ["i", "a"], ["q"])]
    return helper.make_function(DOMAIN, "G", ["e"], ["q"], nodes, [helper.make_opsetid("", opset)])


def expand_function(opset: int) -> FunctionProto:
    """``E(p, v, f, r)``: the ``[C, fan-in]`` tensor whose transpose (shape ``r``, ``[fan-in, C]``)
    holds the values ``v`` at the flat positions ``p`` and elsewhere its column's fill ``f`` (one
    per column, or one)."""
    c = helper.make_node
    nodes = [c("Constant", [], ["m"], value_ints=[-1]),
             c("Expand", ["f", "r"], ["b"]), c("Reshape", ["b", "m"], ["t"]),
             c("ScatterElements", ["t", "p", "v"], ["d"]), c("Reshape", ["d", "r"], ["q"]),
             c("Transpose", ["q"], ["y"])]
    return helper.make_function(DOMAIN, "E", ["p", "v", "f", "r"], ["y"], nodes, [helper.make_opsetid("", opset)])


def mask_function(opset: int) -> FunctionProto:
    """``M(m, v, f, r)``: the ``[C, fan-in]`` tensor whose transpose (shape ``r``) holds, where
    the mask ``m`` (one uint8 0/1 per element, channel-last order) is set, the next of the values
    ``v``, and elsewhere its column's fill ``f``."""
    c = helper.make_node
    nodes = [c("Constant", [], ["a"], value_int=0), c("Constant", [], ["o"], value_ints=[1]),
             c("Cast", ["m"], ["i"], to=TensorProto.INT64), c("CumSum", ["i", "a"], ["p"]),
             c("Sub", ["p", "o"], ["q"]),             # index among v (-1, the last, before the first)
             c("Gather", ["v", "q"], ["g"]), c("Reshape", ["g", "r"], ["g2"]),
             c("Reshape", ["m", "r"], ["m2"]), c("Cast", ["m2"], ["b"], to=TensorProto.BOOL),
             c("Where", ["b", "g2", "f"], ["d"]), c("Transpose", ["d"], ["y"])]
    return helper.make_function(DOMAIN, "M", ["m", "v", "f", "r"], ["y"], nodes, [helper.make_opsetid("", opset)])


FUNCTIONS = {"U": unpack_function, "G": gaps_function, "E": expand_function, "M": mask_function}


class Encoder:
    """Writes weights into a model being built by ``wr`` (see :class:`.onnx_graph._Writer`:
    ``node``, ``init``, ``floats``, ``vector``, ``const``, ``scalar``, ``used``)."""

    def __init__(self, wr, *, sparse: bool, unpack: bool) -> None:
        self.wr, self.sparse, self.unpack = wr, sparse, unpack

    def weight(self, w: Weight) -> str:
        """The float weight value, shaped as ``w`` (``[C, ...]``)."""
        wr = self.wr
        lay = choose(w, sparse=self.sparse, unpack=self.unpack)
        per_channel = w.codes is not None and w.scale.size > 1
        if lay.kind == "dense":
            return self._dq(w, self._dense(w.codes if w.codes is not None else w.values, w), per_channel)
        if lay.kind == "coo":
            return self._coo(w, per_channel)
        if lay.kind == "packed":
            src = self._unpacked(w.codes.reshape(-1), w.bits)
        else:
            values, codes, _ = channel_last(w)
            src = self._sparse(w, lay, values, codes)  # [C, fan-in]
        if len(w.shape) != 2 or lay.kind == "packed":
            src = wr.node("Reshape", [src, wr.const(w.shape)])
        return self._dq(w, src, per_channel)

    def _dense(self, arr: np.ndarray, w: Weight) -> str:
        if w.codes is None:
            return self.wr.floats(arr)
        tb = storage_bits(w.bits)
        name = self.wr.init(TYPES[tb], arr.shape, pack_bits(arr, tb))
        self.wr.native_inputs.add(name)
        return name

    def _unpacked(self, flat: np.ndarray, bits: int) -> str:
        wr = self.wr
        wr.used.add("U")
        blob = wr.init(TensorProto.UINT8, (len(pack_bits(flat, bits)) + 1,), pack_bits(flat, bits) + b"\0")
        return wr.node("U", [blob, wr.scalar(bits), wr.scalar(len(flat))], domain=DOMAIN)

    def _sparse(self, w: Weight, lay: Layout, values: np.ndarray, codes: np.ndarray | None) -> str:
        wr = self.wr
        shape = values.shape
        if codes is None:
            vals, fill = wr.floats(values.reshape(-1)[lay.positions]), wr.floats(np.zeros((), np.float32))
        else:
            stored = codes.reshape(-1)[lay.positions]
            if lay.value_packed:
                vals = self._unpacked(stored, lay.value_bits)
            else:
                vals = wr.init(TYPES[lay.value_bits], (len(stored),), pack_bits(stored, lay.value_bits))
                if lay.value_bits != 8:
                    vals = wr.node("Cast", [vals], to=TensorProto.UINT8)
            fill = self._zero8(w)
        if lay.gaps is None:  # a 1-bit mask
            wr.used.add("M")
            bits = self._unpacked(values.reshape(-1) != 0, 1)
            return wr.node("M", [bits, vals, fill, wr.const(shape)], domain=DOMAIN)
        wr.used.add("E")
        wr.used.add("G")
        gaps = (self._unpacked(lay.gaps, lay.gap_bits) if lay.gap_packed else
                wr.init(TYPES[lay.gap_bits], (len(lay.gaps),), pack_bits(lay.gaps, lay.gap_bits)))
        pos = wr.node("G", [gaps], domain=DOMAIN)
        return wr.node("E", [pos, vals, fill, wr.const(shape)], domain=DOMAIN)
    def _coo(self, w: Weight, per_channel: bool) -> str:
        """A sparse initializer (onnxruntime makes it dense when it loads the model): the non-zero
        values, as INT8 differences from their channel's zero point, dequantized with none."""
        wr = self.wr
        flat = w.values.reshape(-1)
        idx = np.flatnonzero(flat)
        itype, idt = (TensorProto.INT16, "<i2") if flat.size <= 2**15 else (TensorProto.INT32, "<i4")
        name = wr.name()
        if w.codes is None:
            vals = helper.make_tensor(name, TensorProto.FLOAT, [len(idx)], flat[idx].astype("<f4").tobytes(), raw=True)
        else:
            c = w.shape[0]
            zero = np.broadcast_to(w.zero.reshape(-1) if w.zero.size > 1 else w.zero.reshape(()), (c,))
            delta = (w.codes.reshape(c, -1).astype(np.int64) - zero[:, None].astype(np.int64)).reshape(-1)[idx]
            vals = helper.make_tensor(name, TensorProto.INT8, [len(idx)], delta.astype("i1").tobytes(), raw=True)
        ind = helper.make_tensor(wr.name(), itype, [len(idx)], idx.astype(idt).tobytes(), raw=True)
        wr.sparse.append(helper.make_sparse_tensor(vals, ind, list(w.shape)))
        if w.codes is None:
            return name
        scale = wr.vector(w.scale) if per_channel else wr.floats(w.scale.reshape(()))
        return wr.node("DequantizeLinear", [name, scale], **({"axis": 0} if per_channel else {}))

    def _zero8(self, w: Weight) -> str:
        """The zero point as UINT8 (what the sparse and packed layouts dequantize with)."""
        key = id(w)
        if key not in self.wr.zeros8:
            dims = w.zero.shape if w.zero.size > 1 else ()
            self.wr.zeros8[key] = self.wr.init(TensorProto.UINT8, dims, w.zero.astype(np.uint8).tobytes())
        return self.wr.zeros8[key]

    def _dq(self, w: Weight, src: str, per_channel: bool) -> str:
        wr = self.wr
        if w.codes is None:
            return src
        scale = wr.vector(w.scale) if per_channel else wr.floats(w.scale.reshape(()))
        if src in wr.native_inputs:
            zero = wr.init(TYPES[storage_bits(w.bits)], w.zero.shape if per_channel else (),
                           pack_bits(w.zero, storage_bits(w.bits)))
        else:
            zero = self._zero8(w)
        attrs = {"axis": 0} if per_channel else {}
        return wr.node("DequantizeLinear", [src, scale, zero], **attrs)
