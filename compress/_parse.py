"""Parsing an artifact's bytes (the layout is in `_artifact`); every byte is untrusted.

The manifest (format 2) or header (format 3) is at most `MAX_MANIFEST` bytes; the
tensors it lists hold at most ``max_params`` elements; every tensor's byte lengths
must equal what its shape and encoding need (upper bounds for sparse indexes), parts
lie back to back; the LZMA stream is decoded to exactly the length the checked table
describes (more is refused: no decompression bomb).  A format-3 table gets its names
and shapes from the recipe's model (`_format3.resolve`), so its data is decoded only
after that model is built and bounded.  Anything malformed raises `ArtifactError`.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import struct
from typing import Any, BinaryIO, Callable, Union

import numpy as np
import torch

from ._artifact import _HEADER, _LEGACY_MAGIC, FORMAT, MAGIC, _lzma_filters
from ._codes import _varint_decode, unpack_bits
from ._format3 import HeaderError, read_header
from ._quantize import QParams, dequantize

__all__ = ["ArtifactError", "MAX_PARAMS", "MAX_MANIFEST"]

#: Default bound on the model an artifact may describe (elements of all tensors,
#: and parameters and activations per input row of a built-in recipe).
MAX_PARAMS = 100_000_000
#: Largest manifest (format 2's UTF-8 JSON) or header (format 3) accepted, in bytes.
MAX_MANIFEST = 16 * 2**20
_MAX_DIMS = 8
_XZ_MEMLIMIT = 2**27  # the xz decoder's memory (format 1); format 2 caps its dictionary at 2**26
_DTYPES = {n: getattr(torch, n) for n in ("float32", "float64", "float16", "bfloat16", "int64",
                                          "int32", "int16", "int8", "uint8", "bool")}
_PARTS = {("dense", "raw"): 1, ("dense", "codes"): 3, ("sparse", "raw"): 2, ("sparse", "codes"): 4}

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]


class ArtifactError(ValueError):
    """The bytes are not a valid slimtune artifact (or describe a model over the bounds)."""


# ---------------------------------------------------------------- container


def _read(src: Source, max_params: int) -> tuple[bytes, str]:
    if isinstance(max_params, bool) or not isinstance(max_params, int) or not 1 <= max_params <= 2**31:
        raise ValueError(f"`1 <= max_params <= 2**31` must hold, but got max_params={max_params!r}")
    limit = MAX_MANIFEST + 64 + 20 * max_params  # the longest file a model within bounds can take
    if isinstance(src, (bytes, bytearray, memoryview)):
        blob, label = bytes(src), "<bytes>"
    elif hasattr(src, "read"):
        blob, label = _read_at_most(src, limit + 1), str(getattr(src, "name", "<file object>"))
    elif isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            blob, label = _read_at_most(f, min(size, limit) + 1), os.fspath(src)
    else:
        raise TypeError(f"`src` must be a path, bytes or a binary file object, but got {type(src).__name__}")
    if len(blob) > limit:
        raise ArtifactError(f"{label!r} is longer than {limit} bytes, more than a model of max_params="
                            f"{max_params} can take; pass a larger max_params if you trust it")
    return blob, label


def _read_at_most(f: Any, n: int) -> bytes:
    """Up to ``n`` bytes, read in chunks (``f.read(n)`` may allocate ``n`` bytes up front)."""
    chunks, got = [], 0
    while got < n:
        chunk = f.read(min(2**20, n - got))
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError(f"`src` must be opened in binary mode ('rb'), but read() gave {type(chunk).__name__}")
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _guard(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a parsing step; any error the bytes provoke becomes one `ArtifactError` line."""
    try:
        return fn(*args, **kwargs)
    except ArtifactError:
        raise
    except HeaderError as e:
        raise _bad(label, str(e)) from None
    except (IndexError, KeyError, struct.error, ValueError, TypeError, OverflowError, RecursionError,
            lzma.LZMAError, EOFError, RuntimeError, AttributeError) as e:
        detail = " ".join(str(e).split())[:300]
        raise ArtifactError(f"{label!r} is not a valid slimtune artifact ({type(e).__name__}: {detail})") from e


def _bad(label: str, what: str) -> ArtifactError:
    return ArtifactError(f"{label!r} is not a valid slimtune artifact: {what}")


Take = Callable[[int], bytes]


def _parse(blob: bytes, label: str, max_params: int) -> tuple[int, dict[str, Any], Take]:
    """(format, checked manifest or format-3 header, ``take``): ``take(n)`` decodes the data
    section, which must be exactly ``n`` bytes long (``n`` from the checked table)."""
    if blob[: len(_LEGACY_MAGIC)] == _LEGACY_MAGIC:  # format 1
        manifest, end = _manifest_at(blob, len(_LEGACY_MAGIC), label, max_params)
        compression = manifest.get("compression", "none")
        if compression == "lzma":  # a 4 GiB xz dictionary is refused by the memory limit
            return 1, manifest, lambda n: _inflate(lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT),
                                                   blob[end:], n, label)
        if compression != "none":
            raise _bad(label, f"unknown data compression {compression!r}")
        return 1, manifest, lambda n: _exact(blob[end:], n, label)
    if blob[: len(MAGIC) - 1] != MAGIC[:-1] or len(blob) < len(MAGIC) + 1:
        raise ArtifactError(f"{label!r} is not a slimtune artifact (it does not start with {MAGIC[:-1]!r}); "
                            "pass a file written by `compress.save`")
    version, codec = blob[len(MAGIC) - 1], blob[len(MAGIC)]
    if version not in (2, FORMAT) or codec not in (0, 1):
        raise ArtifactError(f"artifact {label!r} has format {version} (codec {codec}), but this slimtune "
                            f"reads formats 1 to {FORMAT}; use the release that wrote it")
    if codec == 0:
        head, at = _head(version, blob[len(MAGIC) + 1 :], label, max_params)
        return version, head, lambda n: _exact(blob[len(MAGIC) + 1 + at :], n, label)
    if len(blob) < len(MAGIC) + 2 or not 12 <= blob[len(MAGIC) + 1] <= 26:
        raise _bad(label, "the LZMA dictionary size byte is missing or outside 12..26")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(blob[len(MAGIC) + 1]))
    stream = _Stream(dec, blob[len(MAGIC) + 2 :])
    head, _ = _head(version, stream, label, max_params)
    return version, head, lambda n: _inflate(dec, b"", n, label)


class _Stream:
    """Slices ``[a:b]`` of an LZMA stream read front to back; decodes no more than ``b`` bytes."""

    def __init__(self, dec: Any, data: bytes) -> None:
        self.dec, self.data, self.got = dec, data, b""

    def __getitem__(self, s: slice) -> bytes:
        if s.stop > len(self.got):
            self.got += self.dec.decompress(self.data, max_length=s.stop - len(self.got))
            self.data = b""
        return self.got[s]


def _head(version: int, body: Any, label: str, max_params: int) -> tuple[dict[str, Any], int]:
    """The manifest (format 2) or header (format 3) at the start of a body; and where it ends."""
    if version == 2:
        n = _manifest_length(body[0 : _HEADER.size], label)
        return _manifest_json(body[_HEADER.size : _HEADER.size + n], n, label, max_params), _HEADER.size + n
    n, at = 0, 0
    while True:  # the header length, a varint of at most 4 bytes (MAX_MANIFEST < 2**28)
        b = body[at : at + 1]
        if not b or at == 4:
            raise _bad(label, "truncated before the header length, or a header length over 4 bytes")
        n, at = n | (b[0] & 0x7F) << (7 * at), at + 1
        if b[0] < 0x80:
            break
    if n > MAX_MANIFEST:
        raise _bad(label, f"header length {n} exceeds the {MAX_MANIFEST}-byte limit")
    raw = body[at : at + n]
    if len(raw) != n:
        raise _bad(label, f"truncated header ({len(raw)} of {n} bytes)")
    try:
        return read_header(raw), at + n
    except HeaderError as e:
        raise _bad(label, str(e)) from None


def _manifest_length(head: bytes, label: str) -> int:
    if len(head) < _HEADER.size:
        raise _bad(label, "truncated before the manifest length")
    (n,) = _HEADER.unpack_from(head, 0)
    if n > MAX_MANIFEST:
        raise _bad(label, f"manifest length {n} exceeds the {MAX_MANIFEST}-byte limit")
    return n


def _manifest_at(blob: bytes, at: int, label: str, max_params: int) -> tuple[dict[str, Any], int]:
    n = _manifest_length(blob[at : at + _HEADER.size], label)
    start = at + _HEADER.size
    return _manifest_json(blob[start : start + n], n, label, max_params), start + n


def _manifest_json(raw: bytes, n: int, label: str, max_params: int) -> dict[str, Any]:
    if len(raw) != n:
        raise _bad(label, f"truncated manifest ({len(raw)} of {n} bytes)")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(label, f"the manifest is not UTF-8 JSON ({' '.join(str(e).split())[:200]})") from None
    _check_manifest(manifest, label, max_params)
    return manifest


def _inflate(dec: Any, data: bytes, size: int, label: str) -> bytes:
    """Exactly ``size`` bytes from the LZMA stream, and the stream must end there."""
    out = dec.decompress(data, max_length=size) if size else b""
    if len(out) != size:
        raise _bad(label, f"the compressed data holds {len(out)} bytes, the manifest describes {size}")
    if not dec.eof and dec.decompress(b"", max_length=1):
        raise _bad(label, f"the compressed data holds more than the {size} bytes the manifest describes")
    if not dec.eof or dec.unused_data:
        raise _bad(label, "the compressed stream is truncated or followed by extra bytes")
    return out


def _exact(data: bytes, size: int, label: str) -> bytes:
    if len(data) != size:
        raise _bad(label, f"the data section has {len(data)} bytes, the manifest describes {size}")
    return data


# ------------------------------------------------------------------ manifest


def _check_manifest(m: Any, label: str, max_params: int) -> None:
    """Types and bounds of every field `load` reads; shapes' element counts within max_params."""
    if not isinstance(m, dict):
        raise _bad(label, f"the manifest must be a JSON object, got {type(m).__name__}")
    for key, kind in (("recipe", dict), ("configs", list), ("tensors", list)):
        if not isinstance(m.get(key), kind):
            raise _bad(label, f"manifest field {key!r} must be a {kind.__name__}, got {m.get(key)!r:.80}")
    names, total, pos = set(), 0, 0
    for i, e in enumerate(m["tensors"]):
        where = f"tensor {i}"
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or e["name"] in names:
            raise _bad(label, f"{where} must be an object with a unique string 'name'")
        names.add(e["name"])
        shape = e.get("shape")
        if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_int(d) and d >= 0 for d in shape):
            raise _bad(label, f"{where} 'shape' must be a list of at most {_MAX_DIMS} ints >= 0, got {shape!r:.80}")
        total += math.prod(shape) if all(d <= max_params for d in shape) else max_params + 1
        if total > max_params:
            raise _bad(label, f"its tensors hold more than max_params={max_params} elements "
                              "(pass a larger max_params if you trust it)")
        if e.get("dtype") not in _DTYPES:
            raise _bad(label, f"{where} 'dtype' must be one of {sorted(_DTYPES)}, got {e.get('dtype')!r:.40}")
        layout = "dense" if e.get("layout") == "dense" else "sparse"
        if e.get("layout") not in ("dense", "bitmask", "delta", "rice") or (layout, e.get("values")) not in _PARTS:
            raise _bad(label, f"{where} has an unknown encoding {e.get('layout')!r:.20}/{e.get('values')!r:.20}")
        parts = e.get("parts")
        if (not _int(e.get("offset")) or e["offset"] < 0 or not isinstance(parts, list)
                or len(parts) != _PARTS[layout, e["values"]] or not all(_int(p) and p >= 0 for p in parts)):
            raise _bad(label, f"{where} needs an int 'offset' >= 0 and {_PARTS[layout, e['values']]} part lengths")
        if e["values"] == "codes" and (not _int(e.get("bits")) or not 2 <= e["bits"] <= 8
                                       or not isinstance(e.get("per_channel"), bool)
                                       or (e["per_channel"] and not shape)
                                       or e.get("packing", "bits") not in ("bits", "bytes")):
            raise _bad(label, f"{where} needs 'bits' in 2..8, a bool 'per_channel' and packing 'bits' or 'bytes'")
        if (e.get("stored", "float16") != "float16" or e.get("scales", "float16") != "float16"
                or ("stored" in e and (e["values"], e["dtype"]) != ("raw", "float32"))
                or ("scales" in e and e["values"] != "codes")):
            raise _bad(label, f"{where} may store only float32 raw values and code scales as 'float16'")
        if e["offset"] != pos:  # the writer stores the tensors' parts back to back, in order
            raise _bad(label, f"{where} starts at offset {e['offset']}, not where the previous one ends ({pos})")
        _check_lengths(e, math.prod(shape), label, where)
        pos += sum(parts)


def _check_lengths(e: dict[str, Any], numel: int, label: str, where: str) -> None:
    """Part lengths that follow from the shape alone (exact, or an upper bound for sparse parts)."""
    parts, size = e["parts"], _value_dtype(e).itemsize
    want: list[tuple[int, int]] = []  # (index, exact length), then upper bounds below
    if e["layout"] == "dense" and e["values"] == "raw":
        want.append((0, numel * size))
    if e["layout"] == "bitmask":
        want.append((0, (numel + 7) // 8))
    if e["values"] == "codes":
        channels = e["shape"][0] if e["per_channel"] else 1
        want += [(len(parts) - 2, (2 if "scales" in e else 4) * channels), (len(parts) - 1, channels)]
        if e["layout"] == "dense":
            want.append((0, numel if e.get("packing") == "bytes" else (numel * e["bits"] + 7) // 8))
    for i, n in want:
        if parts[i] != n:
            raise _bad(label, f"{where} ({e['name']!r:.60}) part {i} has {parts[i]} bytes, its shape needs {n}")
    if e["layout"] != "dense" and (parts[0] > 16 + 10 * numel or parts[1] > max(size, 1) * numel):
        raise _bad(label, f"{where} ({e['name']!r:.60}) has sparse parts longer than its shape allows")


def _value_dtype(e: dict[str, Any]) -> torch.dtype:
    """The dtype raw values are stored in: float16 where the table says so, else the tensor's."""
    return torch.float16 if "stored" in e else _DTYPES[e["dtype"]]


def _data_length(tensors: list[dict[str, Any]]) -> int:
    return max((e["offset"] + sum(e["parts"]) for e in tensors), default=0)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------ tensors


def _decode(e: dict[str, Any], data: bytes, label: str) -> tuple[torch.Tensor, QParams | None]:
    shape, dtype, numel = tuple(e["shape"]), _DTYPES[e["dtype"]], math.prod(e["shape"])
    parts, pos = [], e["offset"]
    for n in e["parts"]:
        parts.append(data[pos : pos + n])
        pos += n
    where = f"tensor {e['name']!r:.60}"
    mask, nnz, rest = None, numel, parts
    if e["layout"] != "dense":
        mask = _mask(e["layout"], parts[0], numel, label, where)
        nnz, rest = int(mask.sum()), parts[1:]
    if e["values"] == "raw":
        stored = _value_dtype(e)
        if len(rest[0]) != nnz * stored.itemsize:
            raise _bad(label, f"{where} stores {len(rest[0])} value bytes for {nnz} values")
        vals = _from_raw(rest[0], stored, nnz).to(dtype)
        out = vals if mask is None else torch.zeros(numel, dtype=dtype).masked_scatter_(mask, vals)
        return out.reshape(shape), None
    bits, per_channel = e["bits"], e["per_channel"]
    width = nnz if e.get("packing") == "bytes" else (nnz * bits + 7) // 8
    if len(rest[0]) != width:
        raise _bad(label, f"{where} stores {len(rest[0])} code bytes for {nnz} {bits}-bit codes")
    view = (shape[0],) + (1,) * (len(shape) - 1) if per_channel else ()
    scale = torch.from_numpy(np.frombuffer(rest[1], "<f2" if "scales" in e else "<f4").astype(np.float32)).reshape(view)
    zp = torch.from_numpy(np.frombuffer(rest[2], np.uint8).astype(np.float32)).reshape(view)
    qp = QParams(bits, scale.contiguous(), zp.contiguous())
    if e.get("packing") == "bytes":
        codes = torch.from_numpy(np.frombuffer(rest[0], np.uint8).copy())
    else:
        codes = torch.from_numpy(unpack_bits(rest[0], bits, nnz))
    if mask is not None:
        codes = torch.zeros(numel, dtype=torch.uint8).masked_scatter_(mask, codes)
    vals = dequantize(codes.reshape(shape), qp).reshape(-1)
    if mask is not None:
        vals[~mask] = 0.0
    return vals.reshape(shape), qp


def _mask(layout: str, index: bytes, numel: int, label: str, where: str) -> torch.Tensor:
    """The non-zero mask a sparse index encodes, every position checked to lie in the tensor."""
    if layout == "bitmask":
        flags = np.unpackbits(np.frombuffer(index, np.uint8), count=numel, bitorder="little")
        return torch.from_numpy(flags.astype(bool))
    gaps = _delta_gaps(index, label, where) if layout == "delta" else _rice_gaps(index, numel, label, where)
    if len(gaps) > numel or (len(gaps) and int(gaps.max()) >= numel):
        raise _bad(label, f"{where}: its index has {len(gaps)} gaps up to {gaps.max() if len(gaps) else 0}, "
                          f"for {numel} elements")
    positions = np.cumsum(gaps + 1) - 1
    if len(positions) and int(positions[-1]) >= numel:
        raise _bad(label, f"{where}: its index points past the tensor's {numel} elements")
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.from_numpy(positions.astype(np.int64))] = True
    return mask


def _delta_gaps(buf: bytes, label: str, where: str) -> np.ndarray:
    b = np.frombuffer(buf, np.uint8)
    ends = np.flatnonzero((b & 0x80) == 0)
    if len(b) and (not len(ends) or ends[-1] != len(b) - 1 or np.diff(ends, prepend=-1).max() > 9):
        raise _bad(label, f"{where}: its varint index is cut off or has a value over 63 bits")
    return _varint_decode(buf)


def _rice_gaps(buf: bytes, numel: int, label: str, where: str) -> np.ndarray:
    if not buf or buf[0] > 32:
        raise _bad(label, f"{where}: its Rice index has no k byte in 0..32")
    k, head = buf[0], np.frombuffer(buf, np.uint8, offset=1)[:10]
    ends = np.flatnonzero((head & 0x80) == 0)
    if not len(ends):
        raise _bad(label, f"{where}: its Rice index count is cut off")
    end = 1 + int(ends[0]) + 1
    n = int(_varint_decode(buf[1:end])[0])
    if n > numel:
        raise _bad(label, f"{where}: its Rice index claims {n} non-zeros for {numel} elements")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    unary = np.unpackbits(np.frombuffer(buf, np.uint8, offset=end)[: (2 * numel + 15) // 8], bitorder="little")
    ones = np.flatnonzero(unary)[:n]  # the unary part ends at its n-th 1
    if len(ones) < n:
        raise _bad(label, f"{where}: its Rice index is cut off in the unary part")
    q = np.diff(ones, prepend=-1) - 1
    start = end + int(ones[-1]) // 8 + 1
    if len(buf) - start != (n * k + 7) // 8 or int(q.max()) > numel >> k:
        raise _bad(label, f"{where}: its Rice index has the wrong length or gaps past the tensor")
    rem = unpack_bits(buf[start:], k, n).astype(np.int64) if k else np.zeros(n, dtype=np.int64)
    return (q.astype(np.int64) << k) | rem


def _from_raw(buf: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(buf, "<i2", count=count).copy()).view(torch.bfloat16)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
    arr = np.frombuffer(buf, np_dtype, count=count)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")).copy())
