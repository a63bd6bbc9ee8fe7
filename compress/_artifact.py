"""The single-file artifact: write, read, and size it.

Layout::

    b"SLIMTUNE"  |  uint32 little-endian manifest length  |  manifest (UTF-8 JSON)  |  data

The manifest holds the recipe, the configs (`config_to_json`), library
versions, metrics, the data-section compression and one entry per tensor of
the state dict: name, shape, dtype, offset, and its encoding:

  layout  "dense"   all values stored
          "bitmask" one bit per element (1 = non-zero), values for non-zeros only
          "delta"   LEB128 varints of the gaps between non-zero flat indices,
                    values for non-zeros only
  values  "raw"     the tensor's own dtype (fp32 weights, biases, buffers)
          "codes"   k-bit codes packed to exactly k bits each, followed by the
                    fp32 scales and uint8 zero-points (see `AffineQuantize`)

Each prunable weight gets the smallest of the encodings valid for it; other
tensors are stored dense/raw.  The data section is lzma (xz) compressed when
that makes it smaller.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import platform
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from ._config import applied_configs, config_from_json, config_to_json
from ._models import build_model, prunable_modules, recipe_of
from ._quantize import QPARAMS_ATTR, QParams, dequantize, qparams_of, quantize

__all__ = ["save", "load", "read_manifest", "dense_bytes", "pack_bits", "unpack_bits"]

MAGIC = b"SLIMTUNE"
FORMAT = 1
_HEADER = struct.Struct("<I")


# --------------------------------------------------------------------- public


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    recipe: dict[str, Any] | None = None,
    configs: Iterable[Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> int:
    """Write ``model`` to one artifact file at ``path``; return its length in bytes.

    recipe:  how to rebuild the architecture (default: the one `build_model`
             recorded on the model).
    configs: the compression configs to record (default: the ones `compress`
             applied to this model).
    metrics: JSON-able dict stored as is.
    The file is written to a temporary file and renamed, so it is never
    half-written.  Same model, same arguments -> same bytes.
    """
    if configs is None:
        configs = applied_configs(model)
    blob = _encode(model, _recipe(model, recipe), list(configs), metrics, dense=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(blob)


def dense_bytes(model: nn.Module, recipe: dict[str, Any] | None = None) -> int:
    """Length of the same container holding ``model`` as plain dense tensors.

    No sparse layouts, no codes, no lzma, no configs or metrics: the baseline
    an artifact is compared with.  Pass the uncompressed model to measure what
    a structurally pruned model would have taken.
    """
    return len(_encode(model, _recipe(model, recipe), [], None, dense=True))


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest dict of the artifact at ``path``."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + _HEADER.size)
        _check_magic(head, path)
        (n,) = _HEADER.unpack_from(head, len(MAGIC))
        return json.loads(f.read(n).decode("utf-8"))


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model saved at ``path`` (same outputs as the saved model).

    The architecture is rebuilt from the stored recipe without touching torch's
    global RNG, resized to the stored tensor shapes (structured pruning), and
    the decoded tensors are loaded.  Quantized weights get their QParams back.
    The model is returned in eval mode (call ``.train()`` to fine-tune it).
    """
    blob = Path(path).read_bytes()
    _check_magic(blob, path)
    (n,) = _HEADER.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _HEADER.size
    manifest = json.loads(blob[start : start + n].decode("utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"artifact {str(path)!r} has format {manifest.get('format')!r}, but this "
            f"slimtune reads format {FORMAT}; use the release that wrote it"
        )
    data = blob[start + n :]
    if manifest["compression"] == "lzma":
        data = lzma.decompress(data)
    with torch.random.fork_rng(devices=[]):
        model = build_model(manifest["recipe"])
    state: dict[str, torch.Tensor] = {}
    qparams: dict[str, QParams] = {}
    for entry in manifest["tensors"]:
        state[entry["name"]], qp = _decode(entry, data)
        if qp is not None:
            qparams[entry["name"]] = qp
    resize_(model, {k: tuple(v.shape) for k, v in state.items()})
    model.load_state_dict(state, strict=True)
    for name, module in prunable_modules(model):
        qp = qparams.get(f"{name}.weight")
        if qp is not None:
            object.__setattr__(module, QPARAMS_ATTR, qp)
    configs = tuple(config_from_json(c) for c in manifest["configs"])
    object.__setattr__(model, "slimtune_configs", configs)
    return model.eval()


def resize_(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """In place: give named parameters/buffers new shapes (values uninitialised).

    Used by `load` after structured pruning; keeps Linear/Conv/BatchNorm size
    attributes in step with their tensors.
    """
    modules = dict(model.named_modules())
    touched = set()
    for name, shape in shapes.items():
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        if module is None:
            continue
        old = module._parameters.get(attr, module._buffers.get(attr))
        if old is None or tuple(old.shape) == tuple(shape):
            continue
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            module._buffers[attr] = new
        touched.add(module)
    for module in touched:
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.conv._ConvNd):
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            module.num_features = module._buffers.get("running_mean", module.weight).shape[0]


# ------------------------------------------------------------------- encoding


def _encode(
    model: nn.Module,
    recipe: dict[str, Any],
    configs: list[Any],
    metrics: dict[str, Any] | None,
    *,
    dense: bool,
) -> bytes:
    prunable = {f"{n}.weight": m for n, m in prunable_modules(model)}
    data = bytearray()
    table = []
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        module = prunable.get(name)
        if dense or module is None:
            layout, values, parts = "dense", "raw", [_raw(t)]
        else:
            layout, values, parts = _smallest(name, t, qparams_of(module))
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "layout": layout,
            "values": values,
            "offset": len(data),
            "parts": [len(p) for p in parts],
        }
        if values == "codes":
            qp = qparams_of(module)
            entry["bits"] = qp.bits
            entry["per_channel"] = qp.per_channel
        table.append(entry)
        for p in parts:
            data += p
    payload, compression = bytes(data), "none"
    if not dense:
        packed = lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
        if len(packed) < len(payload):
            payload, compression = packed, "lzma"
    manifest = {
        "format": FORMAT,
        "recipe": recipe,
        "configs": [config_to_json(c) for c in configs],
        "metrics": _jsonable_metrics(metrics),
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "compression": compression,
        "data_length": len(data),
        "tensors": table,
    }
    head = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + _HEADER.pack(len(head)) + head + payload


def _smallest(name: str, w: torch.Tensor, qp: QParams | None) -> tuple[str, str, list[bytes]]:
    """The shortest valid encoding of a prunable weight (ties: earliest listed)."""
    candidates = [("dense", "raw", [_raw(w)])]
    codes = None
    if qp is not None:
        codes = quantize(w, qp)
        if not torch.equal(dequantize(codes, qp), w.float()):
            raise ValueError(
                f"weight {name!r} changed after AffineQuantize (it is off its quantization "
                "grid, e.g. from fine-tuning), so its codes would not reproduce it; apply "
                "AffineQuantize after fine-tuning, or apply it again before `save`"
            )
        qtail = [qp.scale.reshape(-1).numpy().astype("<f4").tobytes(),
                 qp.zero_point.reshape(-1).numpy().astype(np.uint8).tobytes()]
        candidates.append(("dense", "codes", [pack_bits(codes.reshape(-1).numpy(), qp.bits), *qtail]))
    nonzero = (w != 0).reshape(-1)
    if not bool(nonzero.all()):
        mask = nonzero.numpy()
        index = {"bitmask": np.packbits(mask, bitorder="little").tobytes(),
                 "delta": _varint_encode(np.diff(np.flatnonzero(mask), prepend=-1) - 1)}
        for layout in ("bitmask", "delta"):
            candidates.append((layout, "raw", [index[layout], _raw(w.reshape(-1)[nonzero])]))
            if codes is not None:
                nz_codes = pack_bits(codes.reshape(-1)[nonzero].numpy(), qp.bits)
                candidates.append((layout, "codes", [index[layout], nz_codes, *qtail]))
    return min(candidates, key=lambda c: sum(len(p) for p in c[2]))


def _decode(entry: dict[str, Any], data: bytes) -> tuple[torch.Tensor, QParams | None]:
    shape = tuple(entry["shape"])
    dtype = getattr(torch, entry["dtype"])
    numel = math.prod(shape)
    parts, pos = [], entry["offset"]
    for n in entry["parts"]:
        parts.append(data[pos : pos + n])
        pos += n
    layout, values = entry["layout"], entry["values"]
    if layout == "dense":
        mask, nnz, rest = None, numel, parts
    else:
        if layout == "bitmask":
            flags = np.unpackbits(np.frombuffer(parts[0], np.uint8), count=numel, bitorder="little")
            mask = torch.from_numpy(flags.astype(bool))
        else:
            gaps = _varint_decode(parts[0])
            mask = torch.zeros(numel, dtype=torch.bool)
            mask[torch.from_numpy((np.cumsum(gaps + 1) - 1).astype(np.int64))] = True
        nnz, rest = int(mask.sum()), parts[1:]
    qp = None
    if values == "raw":
        vals = _from_raw(rest[0], dtype, nnz)
    else:
        bits = entry["bits"]
        channels = shape[0] if entry["per_channel"] else 1
        scale = torch.from_numpy(np.frombuffer(rest[1], "<f4").astype(np.float32).copy())
        zp = torch.from_numpy(np.frombuffer(rest[2], np.uint8).astype(np.float32))
        view = (channels,) + (1,) * (len(shape) - 1) if entry["per_channel"] else ()
        qp = QParams(bits, scale.reshape(view).contiguous(), zp.reshape(view).contiguous())
        codes = torch.from_numpy(unpack_bits(rest[0], bits, nnz))
        if mask is not None:
            full = torch.zeros(numel, dtype=torch.uint8)
            full[mask] = codes
            codes = full
        vals = dequantize(codes.reshape(shape), qp).reshape(-1)
        if mask is not None:
            vals[~mask] = 0.0
        return vals.reshape(shape), qp
    if mask is None:
        return vals.reshape(shape), qp
    out = torch.zeros(numel, dtype=dtype)
    out[mask] = vals
    return out.reshape(shape), qp


# -------------------------------------------------------------------- helpers


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ints < 2**bits to exactly ``bits`` bits each (LSB first)."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1)
    planes = (codes[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: ``count`` uint8 values."""
    flat = np.unpackbits(np.frombuffer(buf, np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits)).astype(np.uint16)
    return (flat.reshape(count, bits).astype(np.uint16) @ weights).astype(np.uint8)


def _varint_encode(values: np.ndarray) -> bytes:
    """LEB128: 7 bits per byte, high bit set on all but the last byte of a value."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.shape, dtype=np.int64)
    rest = v >> np.uint64(7)
    while rest.any():
        nbytes += rest > 0
        rest >>= np.uint64(7)
    width = int(nbytes.max())
    pos = np.arange(width)
    groups = ((v[:, None] >> (np.uint64(7) * pos.astype(np.uint64))) & np.uint64(0x7F)).astype(np.uint8)
    groups |= np.where(pos[None, :] < nbytes[:, None] - 1, 0x80, 0).astype(np.uint8)
    return groups[pos[None, :] < nbytes[:, None]].tobytes()


def _varint_decode(buf: bytes) -> np.ndarray:
    b = np.frombuffer(buf, np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (b & 0x80) == 0
    value_id = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    shift = (np.arange(b.size) - starts[value_id]) * 7
    out = np.zeros(int(last.sum()), dtype=np.int64)
    np.add.at(out, value_id, (b & 0x7F).astype(np.int64) << shift)
    return out


def _raw(t: torch.Tensor) -> bytes:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def _from_raw(buf: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(buf, "<i2").copy()).view(torch.bfloat16)[:count]
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
    arr = np.frombuffer(buf, np_dtype, count=count)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")).copy())


def _recipe(model: nn.Module, recipe: dict[str, Any] | None) -> dict[str, Any]:
    recipe = recipe if recipe is not None else recipe_of(model)
    if recipe is None:
        raise ValueError(
            "a recipe is needed to rebuild the model on load, but none was given and the "
            "model was not built by `build_model`; pass `recipe=...`"
        )
    if not isinstance(recipe, dict):
        raise TypeError(f"`recipe` must be a dict, but got {type(recipe).__name__}")
    return recipe


def _jsonable_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise TypeError(f"`metrics` must be a dict, but got {type(metrics).__name__}")
    try:
        return json.loads(json.dumps(metrics))
    except (TypeError, ValueError) as e:
        raise TypeError(f"`metrics` must be JSON-serialisable ({e}), but got {metrics!r}") from e


def _check_magic(head: bytes, path: Any) -> None:
    if head[: len(MAGIC)] != MAGIC or len(head) < len(MAGIC) + _HEADER.size:
        raise ValueError(
            f"{str(path)!r} is not a slimtune artifact (it does not start with {MAGIC!r}); "
            "pass a file written by `compress.save`"
        )
