"""``model.h`` and ``model.c`` of a :class:`~.graph.Graph`: C99 for microcontrollers.

One entry point, ``int slimtune_predict(const float *input, float *output)``: ``input`` holds
``SLIMTUNE_INPUT_SIZE`` raw features (the training preprocessing is applied inside), ``output``
receives ``SLIMTUNE_OUTPUT_SIZE`` values (logits; for regression the prediction in the target's
units); it returns the predicted class (0 for regression). No heap, no file I/O, not reentrant:
activations live in one static arena of ``SLIMTUNE_ARENA_BYTES`` (values share it by lifetime)
plus one decoded weight row. Weights are ``const`` (flash): k-bit codes, each layer's densest
of every code or a 1-bit mask with the non-zero codes, per-channel float scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .c_runtime import ACTIVATIONS, KERNELS, PRELUDE, activation_kernel
from .graph import Graph, Op, Unsupported, Weight
from .packing import pack_bits

C_LAYERS = ("linear", "conv", "act", "add", "reshape", "pool", "gap", "affine")


@dataclass(frozen=True)
class CSource:
    header: str
    source: str
    arena_floats: int
    row_floats: int


def _f(v: float) -> str:
    v = float(np.float32(v))
    if not np.isfinite(v):
        return ("-" if v < 0 else "") + "INFINITY" if np.isinf(v) else "NAN"
    s = f"{v:.9g}"
    if "." not in s and "e" not in s and "n" not in s:
        s += ".0"
    return s + "f"


def _array(ctype: str, name: str, values: list[str]) -> str:
    lines = [", ".join(values[i:i + 12]) for i in range(0, len(values), 12)] or ["0"]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{max(len(values), 1)}] = {{\n    {body}\n}};\n"


def _bytes(name: str, blob: bytes) -> str:
    return _array("uint8_t", name, [f"0x{b:02x}" for b in blob])


def _floats(name: str, arr: np.ndarray) -> str:
    return _array("float", name, [_f(v) for v in np.asarray(arr, np.float32).reshape(-1)])


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


class _Emitter:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.data: list[str] = []
        self.code: list[str] = []
        self.kernels: set[str] = set()
        self.acts: dict[str, str] = {}
        self.math = False
        self.row = 1
        self.count = 0

    def sym(self, prefix: str) -> str:
        self.count += 1
        return f"st_{prefix}{self.count}"

    def layer(self, w: Weight, bias: np.ndarray | None) -> str:
        """A ``st_layer`` for ``w``: every code, or a mask and the non-zero codes, whichever is shorter."""
        c = w.shape[0]
        cols = w.values.size // c
        self.row = max(self.row, cols)
        mask = w.mask.reshape(-1)
        nnz = int(mask.sum())
        bits = w.bits
        sparse = (w.values.size + 7) // 8 + (nnz * bits + 7) // 8 < (w.values.size * bits + 7) // 8
        name = self.sym("L")
        fields = {"codes": "NULL", "values": "NULL", "mask": "NULL", "scale": "NULL", "zero": "NULL", "bias": "NULL"}
        if sparse:
            fields["mask"] = self.sym("m")
            self.data.append(_bytes(fields["mask"], pack_bits(mask.astype(np.uint8), 1)))
        if w.codes is None:
            fields["values"] = self.sym("v")
            vals = w.values.reshape(-1)
            self.data.append(_floats(fields["values"], vals[mask] if sparse else vals))
            bits = 32
        else:
            fields["codes"], fields["scale"], fields["zero"] = self.sym("q"), self.sym("s"), self.sym("z")
            codes = w.codes.reshape(-1)
            self.data.append(_bytes(fields["codes"], pack_bits(codes[mask] if sparse else codes, bits)))
            self.data.append(_floats(fields["scale"], w.scale))
            self.data.append(_array("uint8_t", fields["zero"], [str(int(z)) for z in w.zero.reshape(-1)]))
        if bias is not None:
            fields["bias"] = self.sym("b")
            self.data.append(_floats(fields["bias"], bias))
        per_channel = int(w.codes is not None and w.scale.size > 1)
        init = ", ".join(fields.values())
        self.data.append(f"static const st_layer {name} = {{{init}, {c}, {cols}, {bits}, {per_channel}}};\n")
        return name

    def act(self, a: dict) -> str:
        fn = a["fn"]
        if fn == "gelu" and a.get("approximate") == "tanh":
            fn = "gelu_tanh"
        expr, needs_math = ACTIVATIONS[fn]
        expr = expr.format(alpha=_f(a.get("alpha", 0.0)), min=_f(a.get("min", 0.0)), max=_f(a.get("max", 0.0)),
                           factor=_f(a.get("factor", 1.0)))
        key = expr
        if key not in self.acts:
            self.acts[key] = f"{fn}{len(self.acts)}" if fn in ("leaky_relu", "hardtanh", "scale") else fn
            self.math |= needs_math
        return self.acts[key]


def c_source(graph: Graph) -> CSource:
    """The C export of ``graph`` (raises :class:`~.graph.Unsupported` for an op C lacks)."""
    for op in graph.ops:
        if op.kind not in C_LAYERS:
            raise Unsupported(op.where, "is not supported by the C export")
    em = _Emitter(graph)
    shapes = graph.value_shapes()
    offsets, arena = _allocate(graph)
    n_in, n_out = _numel(graph.input_shape), graph.n_outputs

    def ref(value: str) -> str:
        return "input" if offsets.get(value) is None else f"(st_arena + {offsets[value]})"

    body: list[str] = []
    if graph.x_mean is not None or graph.x_std is not None:
        mean = _stat(em, graph.x_mean, "xm")
        std = _stat(em, graph.x_std, "xs")
        expr = "input[i]" + (f" - {mean}" if mean else "")
        expr = f"({expr}) / {std}" if std else expr
        body.append(f"for (i = 0; i < {n_in}; ++i)\n        st_arena[{offsets['x']} + i] = {expr};")
    for op in graph.ops:
        body.extend(_op(em, op, shapes, ref))
    out = ref(graph.output)
    post = out + "[i]"
    if graph.y_std is not None:
        post = f"{post} * {_f(graph.y_std)}"
    if graph.y_mean is not None:
        post = f"{post} + {_f(graph.y_mean)}"
    body.append(f"for (i = 0; i < {n_out}; ++i)\n        output[i] = {post};")
    if graph.kind == "classification":
        em.kernels.add("argmax")
        body.append(f"return st_argmax(output, {n_out});")
    else:
        body.append("return 0;")
    return _assemble(em, graph, body, arena)


def _stat(em: _Emitter, arr: np.ndarray | None, prefix: str) -> str:
    if arr is None:
        return ""
    if arr.ndim == 0:
        return _f(float(arr))
    name = em.sym(prefix)
    em.data.append(_floats(name, arr))
    return f"{name}[i]"


def _op(em: _Emitter, op: Op, shapes: dict[str, tuple[int, ...]], ref) -> list[str]:
    x, y = ref(op.inputs[0]), ref(op.output)
    n = _numel(op.shape)
    a = op.attrs
    if op.kind == "reshape":
        return [] if x == y else [_copy(em, x, y, n)]
    if op.kind == "linear":
        em.kernels.add("linear")
        lay = em.layer(op.weight, op.bias)
        rows = _numel(shapes[op.inputs[0]]) // op.weight.shape[1]
        return [f"st_linear(&{lay}, {x}, {y}, {rows});"]
    if op.kind == "conv":
        em.kernels.add("conv")
        lay = em.layer(op.weight, op.bias)
        ins, outs = shapes[op.inputs[0]], op.shape
        two = len(outs) == 3
        k, st, d = a["kernel"], a["stride"], a["dilation"]
        p = a["pads"][: len(k)]
        g = [ins[0], ins[1] if two else 1, ins[-1], outs[1] if two else 1, outs[-1],
             k[0] if two else 1, k[-1], st[0] if two else 1, st[-1], p[0] if two else 0, p[-1],
             d[0] if two else 1, d[-1], a["groups"]]
        name = em.sym("c")
        em.data.append(f"static const st_conv_t {name} = {{{', '.join(str(int(v)) for v in g)}}};\n")
        return [f"st_conv(&{lay}, &{name}, {x}, {y});"]
    if op.kind == "act":
        fn = em.act(a)
        return [f"st_{fn}({x}, {y}, {n});"]
    if op.kind == "add":
        em.kernels.add("add")
        return [f"st_add({x}, {ref(op.inputs[1])}, {y}, {n});"]
    if op.kind == "gap":
        em.kernels.add("gap")
        ins = shapes[op.inputs[0]]
        return [f"st_gap({x}, {y}, {ins[0]}, {_numel(ins[1:])});"]
    if op.kind == "affine":
        em.kernels.add("affine")
        gain, shift = em.sym("g"), em.sym("t")
        em.data += [_floats(gain, a["gain"]), _floats(shift, a["shift"])]
        return [f"st_affine({x}, {y}, {gain}, {shift}, {op.shape[0]}, {_numel(op.shape[1:])});"]
    if op.kind == "pool":
        em.kernels.add("pool")
        ins, outs = shapes[op.inputs[0]], op.shape
        two = len(outs) == 3
        k, st, p = a["kernel"], a["stride"], a["pads"][: len(a["kernel"])]
        g = [ins[0], ins[1] if two else 1, ins[-1], outs[1] if two else 1, outs[-1], k[0] if two else 1, k[-1],
             st[0] if two else 1, st[-1], p[0] if two else 0, p[-1], int(a["mode"] == "avg"), int(a["include_pad"])]
        name = em.sym("p")
        em.data.append(f"static const st_pool_t {name} = {{{', '.join(str(int(v)) for v in g)}}};\n")
        if a["mode"] == "max":
            em.math = True  # INFINITY
        return [f"st_pool(&{name}, {x}, {y});"]
    raise AssertionError(op.kind)


def _copy(em: _Emitter, x: str, y: str, n: int) -> str:
    em.kernels.add("copy")
    return f"st_copy({x}, {y}, {n});"


IN_PLACE = ("act", "affine", "reshape", "add")


def _allocate(graph: Graph) -> tuple[dict[str, int | None], int]:
    """An arena offset (in floats) for every value, shared by values whose lifetimes do not
    overlap: a reshape is its input; an elementwise op writes over its input when nothing reads
    that buffer later. The raw input (offset ``None``) is read where it is, unless preprocessing
    writes it into the arena."""
    last: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for v in op.inputs:
            last[v] = i
    last[graph.output] = len(graph.ops)
    buffers: dict[str, tuple[int, int]] = {}  # buffer -> (offset, floats)
    owner: dict[str, str | None] = {}         # value -> its buffer (None: the caller's input)
    where: dict[str, int] = {}                # buffer -> offset, kept after it is freed
    arena = 1

    def place(buf: str, size: int) -> int:
        nonlocal arena
        at = 0
        for off, sz in sorted(buffers.values()):
            if at + size <= off:
                break
            at = max(at, off + sz)
        buffers[buf] = (at, size)
        where[buf] = at
        arena = max(arena, at + size)
        return at

    def done(buf: str | None, i: int) -> bool:
        return all(last.get(v, -1) <= i for v, b in owner.items() if b == buf)

    if graph.x_mean is not None or graph.x_std is not None:
        place("x", _numel(graph.input_shape))
        owner["x"] = "x"
    else:
        owner["x"] = None
    for i, op in enumerate(graph.ops):
        src = owner[op.inputs[0]]
        if op.kind == "reshape" or (op.kind in IN_PLACE and src is not None and done(src, i)):
            owner[op.output] = src
        else:
            owner[op.output] = op.output
            place(op.output, _numel(op.shape))
        for buf in {owner[v] for v in op.inputs}:
            if buf is not None and buf in buffers and done(buf, i):
                del buffers[buf]
    offsets = {v: (None if b is None else where[b]) for v, b in owner.items()}
    return offsets, arena


def _assemble(em: _Emitter, graph: Graph, body: list[str], arena: int) -> CSource:
    n_in, n_out = _numel(graph.input_shape), graph.n_outputs
    acts = "".join(activation_kernel(name, expr) for expr, name in em.acts.items())
    kernels = "".join(KERNELS[k] for k in ("linear", "conv", "pool", "gap", "add", "affine", "copy", "argmax")
                      if k in em.kernels)
    labels = ""
    if graph.kind == "classification" and graph.classes is not None:
        labels = " * Classes (output i is the score of class i): " + ", ".join(str(c) for c in graph.classes) + "\n"
    header = f"""/* model.h: a slimtune model, C99, no heap, no I/O.
 *   int slimtune_predict(const float *input, float *output);
 * input: SLIMTUNE_INPUT_SIZE raw features (row-major over the model's input shape
 * {list(graph.input_shape)}, preprocessed inside as in training); output: SLIMTUNE_OUTPUT_SIZE
 * values ({"logits" if graph.kind == "classification" else "the prediction"}).
 * Returns the predicted class (0 for regression).
 * Static RAM: SLIMTUNE_ARENA_BYTES of activations + SLIMTUNE_ROW_BYTES of one decoded weight
 * row; not reentrant.
{labels} */
#ifndef SLIMTUNE_MODEL_H
#define SLIMTUNE_MODEL_H

#define SLIMTUNE_INPUT_SIZE {n_in}
#define SLIMTUNE_OUTPUT_SIZE {n_out}
#define SLIMTUNE_ARENA_BYTES {4 * arena}
#define SLIMTUNE_ROW_BYTES {4 * em.row}

int slimtune_predict(const float *input, float *output);

#endif
"""
    includes = "#include <stddef.h>\n#include <stdint.h>\n" + ("#include <math.h>\n" if em.math else "")
    main = "\n    ".join(line.replace("\n", "\n    ") for line in body)
    unused = "" if any("input" in b for b in body) else "    (void)input;\n"
    source = f"""/* model.c: generated by slimtune (see model.h). */
{includes}#include "model.h"

#define ST_ROW {em.row}
{PRELUDE}{kernels}{acts}
{"".join(em.data)}
static float st_arena[{arena}];

int slimtune_predict(const float *input, float *output)
{{
    st_i i;
{unused}    {main}
}}
"""
    return CSource(header, source, arena, em.row)
