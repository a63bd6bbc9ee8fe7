"""The single-file artifact: write, read, and size it.

Layout (format 2)::

    b"SLIMTUN\x02"  |  codec (1 byte)  |  body
    body (after decoding) = uint32 little-endian manifest length | manifest (UTF-8 JSON) | data

codec 0: the body is stored as is.  codec 1: one more byte ``d`` follows and
the body is one raw LZMA2 stream (dictionary 2**d bytes), entropy-coding the
manifest and the data together; `save` uses it when it makes the file shorter.
Format 1 files (``b"SLIMTUNE" | uint32 | manifest | data``, data xz-compressed
when the manifest says ``"compression": "lzma"``) are still read.

The manifest holds the recipe, the configs (`config_to_json`), library
versions, metrics and one entry per tensor of the state dict: name, shape,
dtype, offset, the byte length of each part, and its encoding:

  layout  "dense"   all values stored
          "bitmask" one bit per element (1 = non-zero), values for non-zeros only
          "delta"   LEB128 varints of the gaps between non-zero flat indices,
                    values for non-zeros only
          "rice"    the same gaps Golomb-Rice coded: a byte k, the quotients
                    gap >> k in unary (that many 0 bits, then a 1), then the
                    remainders at k bits each; values for non-zeros only
  values  "raw"     the tensor's own dtype (fp32 weights, biases, buffers)
          "codes"   k-bit codes packed to exactly k bits each, followed by the
                    fp32 scales and uint8 zero-points (see `AffineQuantize`);
                    with ``"packing": "bytes"`` one code per byte instead, used
                    when LZMA then makes the file shorter (its literal coder
                    entropy-codes byte-aligned codes better than packed bits)

Each prunable weight gets the smallest of the encodings valid for it; other
tensors are stored dense/raw.
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
from ._quantize import QPARAMS_ATTR, QParams, dequantize, is_fake_quantized, qparams_of, quantize

__all__ = ["save", "load", "read_manifest", "dense_bytes", "pack_bits", "unpack_bits"]

MAGIC = b"SLIMTUN\x02"
FORMAT = 2
_LEGACY_MAGIC = b"SLIMTUNE"  # format 1, read only
_HEADER = struct.Struct("<I")
_CODEC_NONE, _CODEC_LZMA = 0, 1


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
    """The manifest dict of the artifact at ``path`` (decodes only the manifest)."""
    manifest, _ = _split(Path(path).read_bytes(), path, manifest_only=True)
    return manifest


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model saved at ``path`` (same outputs as the saved model).

    The architecture is rebuilt from the stored recipe without touching torch's
    global RNG, resized to the stored tensor shapes (structured pruning), and
    the decoded tensors are loaded.  Quantized weights get their QParams back.
    The model is returned in eval mode (call ``.train()`` to fine-tune it).
    """
    manifest, data = _split(Path(path).read_bytes(), path, manifest_only=False)
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
        params = dict(module.named_parameters(recurse=False))
        old = params.get(attr, dict(module.named_buffers(recurse=False)).get(attr))
        if old is None or tuple(old.shape) == tuple(shape):
            continue
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        # Module.__setattr__ replaces a registered parameter or buffer in place (a buffer keeps
        # its persistence)
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad) if attr in params else new)
        touched.add(module)
    for module in touched:
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, CONVS):
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, NORMS):
            stats = getattr(module, "running_mean", None)
            module.num_features = (stats if stats is not None else module.weight).shape[0]


#: Layers whose size attributes follow their weight's shape (torch's public classes; their
#: private bases _ConvNd and _NormBase are not used).
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
         nn.InstanceNorm3d)


# ------------------------------------------------------------------- encoding


def _encode(
    model: nn.Module,
    recipe: dict[str, Any],
    configs: list[Any],
    metrics: dict[str, Any] | None,
    *,
    dense: bool,
) -> bytes:
    if is_fake_quantized(model):
        raise ValueError(
            "the model still has FakeQuantize (QAT) parametrizations; finish QAT by applying "
            "AffineQuantize, e.g. compress(model, AffineQuantize(bits=4)), before saving"
        )
    prunable = {f"{n}.weight": m for n, m in prunable_modules(model)}
    chosen = []
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        module = prunable.get(name)
        if dense or module is None:
            chosen.append((name, t, module, "dense", "raw", [_raw(t)], None))
        else:
            chosen.append((name, t, module, *_smallest(name, t, qparams_of(module))))
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
    }
    plain = MAGIC + bytes([_CODEC_NONE]) + _body(manifest, chosen, byte_codes=False)
    if dense:
        return plain
    # Entropy coding: LZMA2 over the whole body; with k-bit codes also tried with one
    # code per byte, which LZMA's literal coder compresses better than packed bits.
    best = plain
    for byte_codes in (False, True) if any(c[6] is not None for c in chosen) else (False,):
        body = _body(manifest, chosen, byte_codes=byte_codes)
        log2_dict = max(12, min(26, (len(body) - 1).bit_length()))
        packed = lzma.compress(body, format=lzma.FORMAT_RAW, filters=_lzma_filters(log2_dict, len(body)))
        coded = MAGIC + bytes([_CODEC_LZMA, log2_dict]) + packed
        if len(coded) < len(best):
            best = coded
    return best


def _body(manifest: dict[str, Any], chosen: list[tuple], *, byte_codes: bool) -> bytes:
    """uint32 manifest length | manifest | data, for tensors encoded as `_smallest` chose."""
    data = bytearray()
    table = []
    for name, t, module, layout, values, parts, codes_at in chosen:
        if byte_codes and codes_at is not None:
            qp = qparams_of(module)
            parts = list(parts)
            parts[codes_at] = unpack_bits(parts[codes_at], qp.bits, _count(layout, t)).tobytes()
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
            if byte_codes:
                entry["packing"] = "bytes"
        table.append(entry)
        for p in parts:
            data += p
    head = json.dumps({**manifest, "tensors": table}, sort_keys=True, separators=(",", ":"))
    encoded = head.encode("utf-8")
    return _HEADER.pack(len(encoded)) + encoded + bytes(data)


def _count(layout: str, t: torch.Tensor) -> int:
    """How many codes a weight's codes part holds: all elements, or the non-zeros."""
    return t.numel() if layout == "dense" else int(torch.count_nonzero(t))


def _lzma_filters(log2_dict: int, size: int | None = None) -> list[dict[str, Any]]:
    """Raw LZMA2: the decoder needs only the dictionary size; the encoder's preset
    (9e up to 1 MiB of body, 6 above, for speed) does not change the format."""
    preset = 6 if size is not None and size > 2**20 else 9 | lzma.PRESET_EXTREME
    f: dict[str, Any] = {"id": lzma.FILTER_LZMA2, "dict_size": 2**log2_dict}
    if size is not None:
        f["preset"] = preset
    return [f]


def _split(blob: bytes, path: Any, *, manifest_only: bool) -> tuple[dict[str, Any], bytes]:
    """(manifest, data section) of an artifact's bytes; checks magic and format."""
    if blob[: len(_LEGACY_MAGIC)] == _LEGACY_MAGIC and len(blob) >= len(_LEGACY_MAGIC) + 4:
        (n,) = _HEADER.unpack_from(blob, len(_LEGACY_MAGIC))
        start = len(_LEGACY_MAGIC) + _HEADER.size
        manifest = json.loads(blob[start : start + n].decode("utf-8"))
        data = b"" if manifest_only else blob[start + n :]
        if data and manifest.get("compression") == "lzma":
            data = lzma.decompress(data)
        return manifest, data
    if blob[: len(MAGIC) - 1] != MAGIC[:-1] or len(blob) < len(MAGIC) + 1:
        raise ValueError(
            f"{str(path)!r} is not a slimtune artifact (it does not start with {MAGIC[:-1]!r}); "
            "pass a file written by `compress.save`"
        )
    version, codec = blob[len(MAGIC) - 1], blob[len(MAGIC)]
    if version != FORMAT or codec not in (_CODEC_NONE, _CODEC_LZMA):
        raise ValueError(
            f"artifact {str(path)!r} has format {version} (codec {codec}), but this slimtune "
            f"reads formats 1 and {FORMAT}; use the release that wrote it"
        )
    if codec == _CODEC_NONE:
        body = blob[len(MAGIC) + 1 :]
        (n,) = _HEADER.unpack_from(body, 0)
        rest = body[_HEADER.size :]
    else:
        log2_dict = blob[len(MAGIC) + 1]
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(log2_dict))
        head = dec.decompress(blob[len(MAGIC) + 2 :], max_length=_HEADER.size)
        (n,) = _HEADER.unpack_from(head, 0)
        rest = dec.decompress(b"", max_length=n if manifest_only else -1)
    manifest = json.loads(rest[:n].decode("utf-8"))
    return manifest, rest[n:]


def _smallest(
    name: str, w: torch.Tensor, qp: QParams | None
) -> tuple[str, str, list[bytes], int | None]:
    """The shortest valid encoding of a prunable weight (ties: earliest listed):
    (layout, values, parts, index of the packed-codes part or None)."""
    candidates: list[tuple[str, str, list[bytes], int | None]] = [("dense", "raw", [_raw(w)], None)]
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
        candidates.append(("dense", "codes", [pack_bits(codes.reshape(-1).numpy(), qp.bits), *qtail], 0))
    nonzero = (w != 0).reshape(-1)
    if not bool(nonzero.all()):
        mask = nonzero.numpy()
        gaps = np.diff(np.flatnonzero(mask), prepend=-1) - 1
        index = {"bitmask": np.packbits(mask, bitorder="little").tobytes(),
                 "delta": _varint_encode(gaps),
                 "rice": _rice_encode(gaps)}
        for layout in ("bitmask", "delta", "rice"):
            candidates.append((layout, "raw", [index[layout], _raw(w.reshape(-1)[nonzero])], None))
            if codes is not None:
                nz_codes = pack_bits(codes.reshape(-1)[nonzero].numpy(), qp.bits)
                candidates.append((layout, "codes", [index[layout], nz_codes, *qtail], 1))
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
            gaps = _varint_decode(parts[0]) if layout == "delta" else _rice_decode(parts[0])
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
        if entry.get("packing") == "bytes":
            codes = torch.from_numpy(np.frombuffer(rest[0], np.uint8, count=nnz).copy())
        else:
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
    """Pack unsigned ints < 2**bits (bits <= 32) to exactly ``bits`` bits each (LSB first)."""
    codes = np.asarray(codes).astype(np.uint64).reshape(-1)
    planes = ((codes[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: ``count`` values (uint8 for bits <= 8, else uint64)."""
    flat = np.unpackbits(np.frombuffer(buf, np.uint8), count=count * bits, bitorder="little")
    weights = np.uint64(1) << np.arange(bits, dtype=np.uint64)
    values = (flat.reshape(count, bits).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return values.astype(np.uint8) if bits <= 8 else values


def _rice_encode(values: np.ndarray) -> bytes:
    """Golomb-Rice code of non-negative ints with the k (0..32) that makes it shortest.

    Bytes: k, the count n as a LEB128 varint, the quotients ``v >> k`` in unary
    (that many 0 bits, then a 1), then the remainders at k bits each.
    """
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    sizes = [int((v >> np.uint64(k)).sum()) + v.size * (k + 1) for k in range(33)]
    k = int(np.argmin(sizes))
    q = (v >> np.uint64(k)).astype(np.int64)
    unary = np.zeros(int(q.sum()) + v.size, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 1
    rem = v & np.uint64((1 << k) - 1)
    head = bytes([k]) + _varint_encode(np.array([v.size], dtype=np.uint64))
    return head + np.packbits(unary, bitorder="little").tobytes() + pack_bits(rem, k)


def _rice_decode(buf: bytes) -> np.ndarray:
    k = buf[0]
    end = 1
    while buf[end] & 0x80:
        end += 1
    n = int(_varint_decode(buf[1 : end + 1])[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(buf, np.uint8, offset=end + 1), bitorder="little")
    ones = np.flatnonzero(bits)[:n]  # the unary part ends at its n-th 1
    q = np.diff(ones, prepend=-1) - 1
    start = end + 1 + int(ones[-1]) // 8 + 1
    rem = unpack_bits(buf[start:], k, n).astype(np.int64) if k else np.zeros(n, dtype=np.int64)
    return (q.astype(np.int64) << k) | rem


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


