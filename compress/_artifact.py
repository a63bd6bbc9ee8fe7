"""The single-file artifact: write and size it (`_load` reads it, trusting nothing).

It holds what loading and running the model need, and nothing else: the recipe
(architecture), the tensors, their quantization parameters.  Metrics, configs and
library versions are in the sweep's results row and an export's sidecar.

Layout (format 3)::

    b"SLIMTUN\x03"  |  codec (1 byte)  |  body
    body (after decoding) = varint header length | header | data

codec 0: the body is stored as is.  codec 1: one more byte ``d`` follows and the
body is one raw LZMA2 stream (dictionary 2**d bytes), entropy-coding header and
data together; `save` uses it when it makes the file shorter.  Varints are LEB128.

header = recipe | varint tensor count | one record per tensor of the state dict, in
its order.  Names and shapes are those of the model the recipe builds, so a record
holds only the encoding:

  recipe  byte 1 (mlp) or 2 (cnn), byte n, n varints input_shape, varint output_dim,
          varint depth, varint width (0: ``depth`` varint widths follow, one per layer);
          any other recipe: byte 0, varint length, compact JSON
  record  flags byte: bits 0-1 layout, bit 2 values are codes, bit 3 shape stored,
          bit 4 raw values stored as float16, bit 5 scales float16, bit 6 per channel,
          bit 7 one code per byte; dtype byte (index in `_format3.DTYPES`);
          codes: bits byte (2..8); shape stored: byte n, n varints (structured pruning
          and model hooks); sparse layouts: varint non-zeros; delta/rice: varint index length

The data holds each tensor's parts back to back (their lengths follow from shape,
dtype, non-zero count and encoding):

  layout  "dense"   all values stored
          "bitmask" one bit per element (1 = non-zero), values for non-zeros only
          "delta"   LEB128 varints of the gaps between non-zero flat indices,
                    values for non-zeros only
          "rice"    the same gaps Golomb-Rice coded: a byte k, the count as a varint,
                    the quotients gap >> k in unary (that many 0 bits, then a 1), then
                    the remainders at k bits each; values for non-zeros only
  values  "raw"     the tensor's dtype, or float16 where every value is exactly a
                    float16 (e.g. biases rounded by ``AffineQuantize(fp16=True)``)
          "codes"   k-bit codes packed to exactly k bits each (or one code per byte,
                    when LZMA then makes the file shorter: its literal coder codes
                    byte-aligned codes better than packed bits), followed by the
                    scales (float16 where exact, else float32) and uint8 zero-points
                    (see `AffineQuantize`)

Each prunable weight gets the smallest of the encodings valid for it; other tensors
are stored dense/raw.  Formats 1 (``b"SLIMTUNE"``) and 2 (``b"SLIMTUN\x02"``, a uint32
length and a JSON manifest naming every tensor, with configs, metrics and versions)
are still read.
"""

from __future__ import annotations

import lzma
import os
import secrets
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ._codes import _rice_encode, _varint_encode, pack_bits, unpack_bits
from ._format3 import pack_header, varint
from ._models import build_model, prunable_modules, recipe_of
from ._quantize import QParams, dequantize, is_fake_quantized, qparams_of, quantize

__all__ = ["save", "dense_bytes", "pack_bits", "unpack_bits"]

MAGIC = b"SLIMTUN\x03"
FORMAT = 3
_LEGACY_MAGIC = b"SLIMTUNE"  # format 1, read only
_HEADER = struct.Struct("<I")  # format 2's manifest length
_CODEC_NONE, _CODEC_LZMA = 0, 1


# --------------------------------------------------------------------- public


def save(model: nn.Module, path: str | os.PathLike[str], *, recipe: dict[str, Any] | None = None) -> int:
    """Write ``model`` to one artifact file at ``path``; return its length in bytes.

    recipe: how to rebuild the architecture (default: the one `build_model`
            recorded on the model).
    The file is written to a temporary file and renamed, so it is never
    half-written; it is readable like other new files (mode 0o666 less the umask).
    Same model, same arguments -> same bytes.
    """
    blob = _encode(model, _recipe(model, recipe), dense=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Mode 0o666 less the umask, like any file `open` creates (mkstemp's would be 0o600).
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
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


def check_reloads(model: nn.Module, blob: bytes, builder: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Raise ValueError unless the artifact ``blob`` of the ``module:function`` model ``model``
    reloads (with ``builder``, the hook's function) to a model computing what ``model`` computes
    on two probe rows: a layer whose size or state the artifact cannot restore would not. `save`
    imports nothing, so the caller that runs the hook anyway (a sweep's trial) checks."""
    from ._load import load, read_manifest

    recipe = read_manifest(blob)["recipe"]
    if recipe.get("arch") != "hook" or "input_shape" not in recipe:
        return
    x = torch.randn(2, *recipe["input_shape"], generator=torch.Generator().manual_seed(0))
    was = model.training
    try:
        with torch.no_grad():
            try:
                want = model.eval()(x)
            except (RuntimeError, TypeError, IndexError):  # a model of token ids (an Embedding first)
                x = torch.zeros(2, *recipe["input_shape"], dtype=torch.long)
                want = model.eval()(x)
            try:
                got = load(blob, builders={recipe["hook"]: builder})(x)
            except Exception as exc:  # the artifact of this model does not even load
                raise ValueError(f"the artifact of {recipe['hook']!r} does not reload ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]})") from None
    finally:
        model.train(was)
    if not isinstance(want, torch.Tensor) or got.shape != want.shape or not torch.allclose(
            got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(want.abs().max()))):
        diff = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
        raise ValueError(f"the artifact of {recipe['hook']!r} does not reload to the same model (max |output "
                         f"difference| {diff:.3g}); a layer or attribute it holds cannot be rebuilt as saved")


def dense_bytes(model: nn.Module, recipe: dict[str, Any] | None = None) -> int:
    """Length of the same container holding ``model`` as plain dense tensors.

    No sparse layouts, no codes, no float16, no lzma: the baseline an artifact
    is compared with.  Pass the uncompressed model to measure what a
    structurally pruned model would have taken.
    """
    return len(_encode(model, _recipe(model, recipe), dense=True))


# ------------------------------------------------------------------- encoding

# One tensor's encoding: header record, its data parts, index of the packed-codes part
# (or None), and (bits, count) of those codes.
_Enc = tuple[dict[str, Any], list[bytes], "int | None", "tuple[int, int] | None"]


def _encode(model: nn.Module, recipe: dict[str, Any], *, dense: bool) -> bytes:
    if is_fake_quantized(model):
        raise ValueError(
            "the model still has FakeQuantize (QAT) parametrizations; finish QAT by applying "
            "AffineQuantize, e.g. compress(model, AffineQuantize(bits=4)), before saving"
        )
    prunable = {f"{n}.weight": m for n, m in prunable_modules(model)}
    reference = _reference_shapes(recipe)
    state = model.state_dict()
    if reference is not None and list(state) != list(reference):
        if set(state) != set(reference):
            odd = sorted(set(state) ^ set(reference))[:3]
            raise ValueError(f"the model's tensors do not match its recipe's model (e.g. {odd}); pass its `recipe`")
        state = {name: state[name] for name in reference}  # `load` fills them in the recipe's order
    chosen: list[_Enc] = []
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        module = prunable.get(name)
        if dense or module is None:
            enc: _Enc = (_raw_entry(t, [t], half=not dense), [_raw(t, not dense)], None, None)
        else:
            enc = _smallest(name, t, qparams_of(module))
        if reference is None or reference.get(name) != tuple(t.shape):
            enc[0]["shape"] = list(t.shape)
        chosen.append(enc)
    plain = MAGIC + bytes([_CODEC_NONE]) + _body(recipe, chosen, byte_codes=False)
    if dense:
        return plain
    # Entropy coding: LZMA2 over the whole body; with k-bit codes also tried with one
    # code per byte, which LZMA's literal coder compresses better than packed bits.
    best = plain
    for byte_codes in (False, True) if any(c[2] is not None for c in chosen) else (False,):
        body = _body(recipe, chosen, byte_codes=byte_codes)
        log2_dict = max(12, min(26, (len(body) - 1).bit_length()))
        packed = lzma.compress(body, format=lzma.FORMAT_RAW, filters=_lzma_filters(log2_dict, len(body)))
        coded = MAGIC + bytes([_CODEC_LZMA, log2_dict]) + packed
        if len(coded) < len(best):
            best = coded
    return best


def _reference_shapes(recipe: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the built-in model ``recipe`` describes (built on the meta device: no memory,
    no RNG), or None for a model hook, whose tensors then all store their shapes."""
    if recipe.get("arch") not in ("mlp", "cnn"):
        return None
    with torch.device("meta"):
        model = build_model(recipe)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _body(recipe: dict[str, Any], chosen: list[_Enc], *, byte_codes: bool) -> bytes:
    """varint header length | header | data, for tensors encoded as `_smallest` chose."""
    data = bytearray()
    entries = []
    for entry, parts, codes_at, codes in chosen:
        if byte_codes and codes_at is not None:
            parts = list(parts)
            parts[codes_at] = unpack_bits(parts[codes_at], *codes).tobytes()
            entry = {**entry, "packing": "bytes"}
        entries.append(entry)
        for p in parts:
            data += p
    head = pack_header(recipe, entries)
    return varint(len(head)) + head + bytes(data)


def _lzma_filters(log2_dict: int, size: int | None = None) -> list[dict[str, Any]]:
    """Raw LZMA2: the decoder needs only the dictionary size; the encoder's preset
    (9e up to 1 MiB of body, 6 above, for speed) does not change the format."""
    preset = 6 if size is not None and size > 2**20 else 9 | lzma.PRESET_EXTREME
    f: dict[str, Any] = {"id": lzma.FILTER_LZMA2, "dict_size": 2**log2_dict}
    if size is not None:
        f["preset"] = preset
    return [f]


def _fits_fp16(t: torch.Tensor) -> bool:
    """Every value of the float32 ``t`` is exactly a float16 value."""
    return t.dtype == torch.float32 and torch.equal(t.to(torch.float16).float(), t)


def _raw_entry(t: torch.Tensor, values: list[torch.Tensor], *, half: bool) -> dict[str, Any]:
    """The record of raw ``values`` (float16 when ``half`` allows and they all fit)."""
    entry = {"layout": "dense", "values": "raw", "dtype": str(t.dtype).removeprefix("torch.")}
    if half and all(_fits_fp16(v) for v in values):
        entry["stored"] = "float16"
    return entry


def _smallest(name: str, w: torch.Tensor, qp: QParams | None) -> _Enc:
    """The shortest valid encoding of a prunable weight (ties: earliest listed)."""
    raw = _raw_entry(w, [w], half=True)
    candidates: list[_Enc] = [(raw, [_raw(w, True)], None, None)]
    codes = None
    if qp is not None:
        codes = quantize(w, qp)
        if not torch.equal(dequantize(codes, qp), w.float()):
            raise ValueError(
                f"weight {name!r} changed after AffineQuantize (it is off its quantization "
                "grid, e.g. from fine-tuning), so its codes would not reproduce it; apply "
                "AffineQuantize after fine-tuning, or apply it again before `save`"
            )
        scale = qp.scale.reshape(-1).float()
        coded = {"layout": "dense", "values": "codes", "dtype": raw["dtype"], "bits": qp.bits,
                 "per_channel": qp.per_channel}
        if _fits_fp16(scale):
            coded["scales"] = "float16"
        qtail = [scale.numpy().astype("<f2" if "scales" in coded else "<f4").tobytes(),
                 qp.zero_point.reshape(-1).numpy().astype(np.uint8).tobytes()]
        candidates.append((coded, [pack_bits(codes.reshape(-1).numpy(), qp.bits), *qtail], 0, (qp.bits, w.numel())))
    nonzero = (w != 0).reshape(-1)
    if not bool(nonzero.all()):
        mask = nonzero.numpy()
        nnz = int(mask.sum())
        gaps = np.diff(np.flatnonzero(mask), prepend=-1) - 1
        index = {"bitmask": np.packbits(mask, bitorder="little").tobytes(),
                 "delta": _varint_encode(gaps),
                 "rice": _rice_encode(gaps)}
        values = w.reshape(-1)[nonzero]
        sparse_raw = _raw_entry(w, [values], half=True)
        for layout in ("bitmask", "delta", "rice"):
            extra = {"layout": layout, "nnz": nnz, **({} if layout == "bitmask" else {"index": len(index[layout])})}
            raw_parts = [index[layout], _raw(values, "stored" in sparse_raw)]
            candidates.append(({**sparse_raw, **extra}, raw_parts, None, None))
            if codes is not None:
                nz_codes = pack_bits(codes.reshape(-1)[nonzero].numpy(), qp.bits)
                candidates.append(({**coded, **extra}, [index[layout], nz_codes, *qtail], 1, (qp.bits, nnz)))
    best = min(candidates, key=lambda c: sum(len(p) for p in c[1]))
    return (dict(best[0]), *best[1:])


# -------------------------------------------------------------------- helpers


def _raw(t: torch.Tensor, half: bool = False) -> bytes:
    """Little-endian bytes of ``t``: float16 when ``half`` and ``t`` fits, else its dtype."""
    if half and _fits_fp16(t):
        return t.to(torch.float16).numpy().astype("<f2").tobytes()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


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
