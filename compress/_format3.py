"""The format-3 header (see `_artifact` for the file's layout): written, read and resolved.

The header holds the recipe and, per tensor of the model's state dict (in its order), only
how the tensor is encoded; names and shapes come from the model the recipe builds.  Reading
trusts nothing: every count and length is read within the header's own bytes, and the table
`resolve` gives (with names, shapes, offsets, part lengths) is checked like a format-2
manifest before any data is decoded.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

__all__ = ["DTYPES", "LAYOUTS", "pack_header", "read_header", "resolve"]

#: Tensor dtypes by their code in the header.
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
LAYOUTS = ("dense", "bitmask", "delta", "rice")
_BUILTIN = {1: "mlp", 2: "cnn"}
_CODES, _SHAPE, _HALF_VALUES, _HALF_SCALES, _PER_CHANNEL, _BYTE_CODES = 4, 8, 16, 32, 64, 128
_MAX_DIMS = 8


class HeaderError(ValueError):
    """The header bytes are malformed (the caller turns it into an `ArtifactError`)."""


# -------------------------------------------------------------------- writing


def varint(v: int) -> bytes:
    """LEB128 of one int >= 0."""
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def pack_header(recipe: dict[str, Any], entries: list[dict[str, Any]]) -> bytes:
    """Recipe | tensor count | one record per tensor (`read_header` inverts it)."""
    out = bytearray(_pack_recipe(recipe))
    out += varint(len(entries))
    for e in entries:
        flags = LAYOUTS.index(e["layout"])
        flags |= _CODES if e["values"] == "codes" else 0
        flags |= _SHAPE if "shape" in e else 0
        flags |= _HALF_VALUES if e.get("stored") == "float16" else 0
        flags |= _HALF_SCALES if e.get("scales") == "float16" else 0
        flags |= _PER_CHANNEL if e.get("per_channel") else 0
        flags |= _BYTE_CODES if e.get("packing") == "bytes" else 0
        out += bytes([flags, DTYPES.index(e["dtype"])])
        if e["values"] == "codes":
            out.append(e["bits"])
        if "shape" in e:
            out.append(len(e["shape"]))
            out += b"".join(varint(d) for d in e["shape"])
        if e["layout"] != "dense":
            out += varint(e["nnz"])
        if e["layout"] in ("delta", "rice"):
            out += varint(e["index"])
    return bytes(out)


def _pack_recipe(recipe: dict[str, Any]) -> bytes:
    """A built-in mlp/cnn recipe as numbers (kind 1/2), anything else as JSON (kind 0)."""
    arch = {v: k for k, v in _BUILTIN.items()}.get(recipe.get("arch"))
    shape, width = recipe.get("input_shape"), recipe.get("width")
    widths = width if isinstance(width, list) else [width]
    numbers = [recipe.get("output_dim"), recipe.get("depth"), *(shape if isinstance(shape, list) else [None]), *widths]
    if (arch is not None and set(recipe) == {"arch", "input_shape", "output_dim", "depth", "width"}
            and all(_int(v) and v >= 1 for v in numbers) and 1 <= len(shape) <= _MAX_DIMS
            and (not isinstance(width, list) or len(width) == recipe["depth"])):
        out = bytes([arch, len(shape)]) + b"".join(varint(d) for d in shape)
        out += varint(recipe["output_dim"]) + varint(recipe["depth"])
        if isinstance(width, list):  # 0 (no width is 0) says one width per layer follows
            return out + varint(0) + b"".join(varint(w) for w in width)
        return out + varint(width)
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return bytes([0]) + varint(len(text)) + text


# -------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def byte(self, what: str) -> int:
        if self.pos >= len(self.buf):
            raise HeaderError(f"the header ends inside {what}")
        self.pos += 1
        return self.buf[self.pos - 1]

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 63, 7):
            b = self.byte(what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise HeaderError(f"{what} is a varint longer than 9 bytes")

    def bytes(self, n: int, what: str) -> bytes:
        if n > len(self.buf) - self.pos:
            raise HeaderError(f"{what} claims {n} bytes, the header has {len(self.buf) - self.pos} left")
        self.pos += n
        return self.buf[self.pos - n : self.pos]


def read_header(buf: bytes) -> dict[str, Any]:
    """``{"format": 3, "recipe": ..., "tensors": [encoding per tensor]}``; raises HeaderError."""
    r = _Reader(buf)
    recipe = _read_recipe(r)
    count = r.varint("the tensor count")
    if count > len(buf):  # every record takes at least 2 bytes
        raise HeaderError(f"the header claims {count} tensors in {len(buf)} bytes")
    tensors = [_read_entry(r, i) for i in range(count)]
    if r.pos != len(buf):
        raise HeaderError(f"{len(buf) - r.pos} bytes follow the tensor table")
    return {"format": 3, "recipe": recipe, "tensors": tensors}


def _read_recipe(r: _Reader) -> dict[str, Any]:
    kind = r.byte("the recipe kind")
    if kind == 0:
        raw = r.bytes(r.varint("the recipe length"), "the recipe")
        try:
            recipe = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise HeaderError(f"the recipe is not UTF-8 JSON ({' '.join(str(e).split())[:200]})") from None
        if not isinstance(recipe, dict):
            raise HeaderError(f"the recipe must be a JSON object, got {type(recipe).__name__}")
        return recipe
    if kind not in _BUILTIN:
        raise HeaderError(f"unknown recipe kind {kind}")
    dims = r.byte("the input dims")
    if not 1 <= dims <= _MAX_DIMS:
        raise HeaderError(f"the input has {dims} dims, not 1..{_MAX_DIMS}")
    shape = [r.varint("the input shape") for _ in range(dims)]
    output_dim, depth, width = r.varint("output_dim"), r.varint("depth"), r.varint("width")
    recipe = {"arch": _BUILTIN[kind], "input_shape": shape, "output_dim": output_dim, "depth": depth}
    if width == 0:
        if depth > len(r.buf) - r.pos:  # one byte at least per width
            raise HeaderError(f"depth {depth} widths do not fit in the header")
        return {**recipe, "width": [r.varint("a width") for _ in range(depth)]}
    return {**recipe, "width": width}


def _read_entry(r: _Reader, i: int) -> dict[str, Any]:
    where = f"tensor {i}"
    flags, dtype = r.byte(where), r.byte(where)
    if dtype >= len(DTYPES):
        raise HeaderError(f"{where} has an unknown dtype code {dtype}")
    e: dict[str, Any] = {"layout": LAYOUTS[flags & 3], "values": "codes" if flags & _CODES else "raw",
                         "dtype": DTYPES[dtype]}
    if e["values"] == "codes":
        e["bits"] = r.byte(where)
        e["per_channel"] = bool(flags & _PER_CHANNEL)
        if not 2 <= e["bits"] <= 8:
            raise HeaderError(f"{where} has {e['bits']}-bit codes, not 2..8")
        if flags & _BYTE_CODES:
            e["packing"] = "bytes"
        if flags & _HALF_SCALES:
            e["scales"] = "float16"
    elif flags & (_PER_CHANNEL | _BYTE_CODES | _HALF_SCALES):
        raise HeaderError(f"{where} has code flags but raw values")
    if flags & _HALF_VALUES:
        if e["values"] != "raw" or e["dtype"] != "float32":
            raise HeaderError(f"{where} stores float16 values for {e['dtype']} {e['values']}")
        e["stored"] = "float16"
    if flags & _SHAPE:
        dims = r.byte(where)
        if dims > _MAX_DIMS:
            raise HeaderError(f"{where} has {dims} dims, more than {_MAX_DIMS}")
        e["shape"] = [r.varint(where) for _ in range(dims)]
    if e["layout"] != "dense":
        e["nnz"] = r.varint(where)
    if e["layout"] in ("delta", "rice"):
        e["index"] = r.varint(where)
    return e


# ------------------------------------------------------------------- resolving


def resolve(tensors: list[dict[str, Any]], own: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """The format-2 style table (name, shape, offset, part lengths) of a format-3 header's
    ``tensors`` for a model whose state dict is ``own``; lengths follow from the shapes."""
    if len(tensors) != len(own):
        raise HeaderError(f"{len(tensors)} tensors are stored, the recipe's model has {len(own)}")
    table, pos = [], 0
    for (name, t), e in zip(own.items(), tensors, strict=True):
        shape = list(e.get("shape", t.shape))
        if len(shape) != t.dim() or any(s > h for s, h in zip(shape, t.shape, strict=True)):
            raise HeaderError(f"tensor {name!r} has shape {shape}, larger than the model's {list(t.shape)}")
        numel = math.prod(shape)
        count = numel if e["layout"] == "dense" else e["nnz"]
        if count > numel:
            raise HeaderError(f"tensor {name!r} claims {count} non-zeros of {numel} elements")
        if e["values"] == "raw":
            size = 2 if e.get("stored") == "float16" else getattr(torch, e["dtype"]).itemsize
            values = [count * size]
        else:
            channels = shape[0] if e["per_channel"] and shape else 1
            codes = count if e.get("packing") == "bytes" else (count * e["bits"] + 7) // 8
            values = [codes, (2 if e.get("scales") == "float16" else 4) * channels, channels]
        index = {"dense": [], "bitmask": [(numel + 7) // 8]}.get(e["layout"], [e.get("index", 0)])
        parts = index + values
        entry = {k: v for k, v in e.items() if k not in ("nnz", "index")}
        table.append({**entry, "name": name, "shape": shape, "offset": pos, "parts": parts})
        pos += sum(parts)
    return table


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
